"""``siglip-lightning plan`` on every committed recipe, its numbers against the recipe, and its errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from siglip_lightning.cli import main
from siglip_lightning.commands.plan import parse, plan_config, plan_parsed
from siglip_lightning.plan.planner import largest_batch, peak_at
from tests.conftest import REPO

CONFIGS = REPO / "configs"
RECIPES = [p.name for p in sorted(CONFIGS.glob("*.yaml")) if "model" in (yaml.safe_load(p.read_text()) or {})]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    from tests.helpers.pretrained_factory import make_hf_siglip

    return make_hf_siglip(tmp_path_factory.mktemp("hf") / "tiny")


def _recipe_args(name: str, tiny_hf: Path) -> list:
    args = ["--config", str(CONFIGS / name)]
    shrink = CONFIGS / "runlocal" / name
    if shrink.exists():  # the recipe shrunk to tiny towers, its strategy, loss and precision kept where set
        args += ["--config", str(shrink)]
    if name == "finetune_hf.yaml":
        args += ["--pretrained", str(tiny_hf)]
    return args


def test_every_recipe_is_a_planned_table(tiny_hf, capsys):
    assert {"siglip_b16.yaml", "siglit.yaml", "finetune_hf.yaml", "naflex.yaml"} <= set(RECIPES)
    for name in RECIPES:
        main(["plan", *_recipe_args(name, tiny_hf), "--plan.device", "H100"])
        out = capsys.readouterr().out
        for row in ("| parameters |", "| activations (peak) |", "| loss memory |", "| planned peak |",
                    "| FLOPs per step", "| largest per-device batch that fits |", "| step time at this batch (s) |"):
            assert row in out, (name, row, out)
        # a recipe with SigLIP 2's objectives says that their forward is left out; no other recipe does
        objectives = bool((yaml.safe_load((CONFIGS / name).read_text())["model"] or {}).get("objectives"))
        said = "not planned: activations and FLOPs of model.objectives (LocCaCaptioning" in out
        assert said == objectives, (name, out)


def test_the_plan_follows_the_recipe():
    """B/16 at its recipe's scale: global batch, parameters and FLOPs against the plain counts."""
    summary = plan_config(["--config", str(CONFIGS / "siglip_b16.yaml"), "--data.batch_size=32",
                           "--plan.device_peak_tflops=100", "--plan.device_memory_gib=80"])
    assert summary["global_batch"] == 32 * 8 * 16 and summary["strategy"] == "DDP x128"
    # ViT-B/16 + a 12-layer 768-wide text tower with a 32k vocabulary: about 203M float32 parameters
    assert 195e6 * 4 < summary["parameters"] < 210e6 * 4
    assert summary["DDP buckets"] == summary["parameters"]
    # AdamW: two moments per parameter, and a 4-byte step count per tensor
    assert 0 < summary["optimizer state"] - 2 * summary["parameters"] < 4 * 1000
    # forward + backward ~ 3 x 2 x (parameters touched per token) x tokens: 196 patches, 16 text tokens
    per_pair = 6 * (86e6 * 196 + 85e6 * 16)
    assert 0.9 < summary["flops_per_step"] / (32 * per_pair) < 1.25
    assert summary["step_seconds"] == pytest.approx(summary["flops_per_step"] / (100e12 * 0.4))


def test_largest_batch_is_where_the_planned_peak_meets_the_memory():
    config = parse(["--config", str(CONFIGS / "quickstart.yaml")])
    plan, module = plan_parsed(config)
    assert peak_at(plan, module, plan.rows) == pytest.approx(plan.peak, rel=1e-9)  # the line goes through the trace
    half = plan_parsed(parse(["--config", str(CONFIGS / "quickstart.yaml"), "--data.batch_size=64"]))[0]
    assert peak_at(plan, module, 64) == pytest.approx(half.peak, rel=1e-9)
    budget = 3 * plan.peak
    best = largest_batch(lambda rows: peak_at(plan, module, rows) <= budget)
    assert peak_at(plan, module, best) <= budget < peak_at(plan, module, best + 1)
    assert largest_batch(lambda rows: False) == 0


def test_json_output_and_one_line_errors(capsys):
    main(["plan", "--config", str(CONFIGS / "quickstart.yaml"), "--plan.json=true"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["planned peak"] > summary["activations (peak)"] > 0
    for bad, message in [(["--trainer.precision=transformer-engine"], "does not know trainer.precision"),
                         (["--plan.device=TPU9"], "unknown device 'TPU9'"),
                         (["--plan.mfu=1.5"], "--plan.mfu must be in (0, 1]")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["plan", "--config", str(CONFIGS / "quickstart.yaml"), *bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
