"""The real CLI on CPU with tiny towers: fit, help, checkpoints, resume, and bad input."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from siglip_lightning import SigLIPModule
from siglip_lightning.cli import cli_main, main
from tests.conftest import REPO, run_cli, tiny_fit_args


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One 2-step fit, shared by the tests that inspect what a run leaves behind."""
    root = tmp_path_factory.mktemp("fit")
    cli = cli_main(tiny_fit_args(root, "--trainer.max_steps=2",
                                 "--trainer.callbacks+=siglip_lightning.eval.ZeroShotClassification"))
    return root, cli


def test_fit_two_steps_writes_config_checkpoint_and_logs(fitted):
    root, cli = fitted
    assert cli.trainer.global_step == 2
    configs = list(root.rglob("config.yaml"))
    checkpoints = list(root.rglob("*.ckpt"))
    events = list(root.rglob("events.out.tfevents.*"))
    assert configs and checkpoints and events, (configs, checkpoints, events)
    saved = yaml.safe_load(configs[0].read_text())
    assert saved["model"]["image_tower"]["class_path"].endswith("VisionTower")
    assert saved["data"]["builtin"]["num_train"] == 512
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "train/t", "train/b", "val/loss", "zeroshot/builtin/top1"):
        assert key in metrics, f"{key} not logged; have {sorted(metrics)}"
        assert torch.isfinite(metrics[key])


def test_load_from_checkpoint_rebuilds_module(fitted):
    root, cli = fitted
    ckpt = sorted(root.rglob("*.ckpt"))[0]
    restored = SigLIPModule.load_from_checkpoint(ckpt)
    trained = cli.model
    assert type(restored.image_tower) is type(trained.image_tower)
    for (name, a), (_, b) in zip(trained.state_dict().items(), restored.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    images = torch.randn(3, 3, 16, 16)
    text = torch.randint(0, 200, (3, 8))
    trained.eval()
    restored.eval()
    with torch.no_grad():
        for x, y in zip(trained(images, text), restored(images, text)):
            torch.testing.assert_close(x, y)


def test_fit_resumes_from_checkpoint(fitted, tmp_path):
    root, cli = fitted
    ckpt = sorted(root.rglob("*.ckpt"))[0]
    resumed = cli_main(tiny_fit_args(tmp_path, "--trainer.max_steps=4", f"--ckpt_path={ckpt}"))
    assert resumed.trainer.global_step == 4  # continued from 2, not from 0
    # The optimizer state came back too: AdamW's step count continues.
    state = resumed.trainer.optimizers[0].state
    assert max(int(s["step"]) for s in state.values()) == 4


def test_sigmoid_init_is_the_papers(fitted):
    _, cli = fitted
    fresh = SigLIPModule(cli.model.image_tower, cli.model.text_tower)
    assert fresh.logit_scale.exp().item() == pytest.approx(10.0)
    assert fresh.logit_bias.item() == -10.0


@pytest.mark.parametrize("loss", ["SoftmaxLoss", "siglip_lightning.SoftmaxLoss"])
def test_loss_selected_by_config(tmp_path, loss):
    cli = cli_main(tiny_fit_args(tmp_path, f"--model.loss={loss}", "--trainer.max_steps=1",
                                 "--trainer.limit_val_batches=0"))
    assert type(cli.model.loss).__name__ == "SoftmaxLoss"
    assert cli.model.logit_bias is None  # CLIP has no bias
    assert cli.model.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-2)


def test_help_commands():
    top = run_cli(["--help"])
    assert top.returncode == 0 and "fit" in top.stdout
    listed = top.stdout.replace("-\n", "-")  # argparse wraps the epilog at a command name's hyphen
    assert all(name in listed for name in ("train-tokenizer", "export", "evaluate", "wise-ft"))
    fit = run_cli(["fit", "--help"])
    assert fit.returncode == 0
    for key in ("--model.loss", "--data.path", "--model.lr", "--data.batch_size"):
        assert key in fit.stdout


# configs/experiments/ are grids for `siglip-lightning experiments` (tests/experiments/test_experiments.py),
# configs/eval/ suites for `siglip-lightning evaluate` (tests/eval/test_suites.py).
# Configs marked "needs --pretrained" parse with a model folder in tests/interop/test_pretrained_finetune.py.
CONFIGS = sorted(c for c in (REPO / "configs").rglob("*.yaml")
                 if not {"experiments", "eval"} & set(c.relative_to(REPO / "configs").parts)
                 and "needs --pretrained" not in c.read_text())
# Partial configs parse on top of the run config they are meant to extend.
ON_QUICKSTART = ("fragments", "strategies")


def config_stack(config: Path) -> list:
    rel = config.relative_to(REPO / "configs")
    base = None
    if rel.parts[0] == "runlocal":  # a shrunk recipe overrides its full recipe
        base = REPO / "configs" / rel.name
    elif rel.parts[0] in ON_QUICKSTART or rel.name.startswith("eval_") or "# config-fragment" in config.read_text():
        base = REPO / "configs" / "quickstart.yaml"
    return (["--config", str(base)] if base else []) + ["--config", str(config)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: str(c.relative_to(REPO / "configs")))
def test_every_config_parses(config, capsys):
    """Each YAML under configs/ parses in full (partial ones on top of the config they extend)."""
    configs = config_stack(config)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *configs, "--print_config"])
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), out.err[-2000:]
    printed = yaml.safe_load(out.out)
    assert "model" in printed and "trainer" in printed


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--model.no_such_key=1"], "no_such_key"),
        (["--model.loss=NoSuchLoss"], "NoSuchLoss"),
        (["--data.path=/nonexistent/shards"], "data path not found"),
        (["--data.image_column=picture"], "image column 'picture' not found"),
        (["--data.text_column=alt_text"], "text column 'alt_text' not found"),
    ],
)
def test_bad_input_gives_clear_error(tmp_path, capsys, extra, expected):
    """The console entry point exits non-zero with one line naming the problem; any other
    exception (a traceback from deep inside a library) would fail this test."""
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_fit_args(tmp_path, *extra))
    assert exit_info.value.code not in (0, None)
    stderr = capsys.readouterr().err
    assert expected in stderr, stderr[-3000:]
    assert "Traceback" not in stderr


def test_bad_input_exit_code_from_console_script(tmp_path):
    result = run_cli(tiny_fit_args(tmp_path, "--data.path=/nonexistent/shards"), timeout=300)
    assert result.returncode == 2
    assert "siglip-lightning: error: data path not found" in result.stderr
    assert "Traceback" not in result.stderr
