"""The sweep machinery: grid expansion (steps, lr rule, formulas), corruption, reports, committed configs."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from siglip_lightning.data.corruption import Corruption
from siglip_lightning.errors import UserInputError
from siglip_lightning.experiments.metrics import final_metrics
from siglip_lightning.experiments.report import markdown_table, paired_differences, summarise, write_report
from siglip_lightning.experiments.sweep import expand, load_sweep, nested

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "experiments").glob("*.yaml"))


def _sweep(tmp_path, text: str, base: str = "trainer: {devices: 1}\n", quick: bool = False) -> dict:
    (tmp_path / "base.yaml").write_text(base)
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: [{tmp_path / 'base.yaml'}]\n" + text)
    return load_sweep(path, quick=quick)


def test_steps_lr_rule_warmup_and_formulas(tmp_path):
    config = _sweep(tmp_path, """
examples: 4096
lr: {base: 0.003, ref_batch: 256, rule: sqrt}
warmup_fraction: 0.05
axes:
  global_batch: [16, 1024]
  loss:
    sigmoid: {model.init_logit_bias: "=-log(batch)"}
    softmax: {model.loss: {class_path: siglip_lightning.SoftmaxLoss}}
  seed: {keys: [seed_everything, data.seed], values: [0, 1]}
""")
    cells = expand(config)
    assert len(cells) == 8 and len({c.name for c in cells}) == 8
    by = {(c.values["global_batch"], c.values["loss"], c.values["seed"]): c for c in cells}
    small = by[(16, "sigmoid", 1)].overrides
    assert small["trainer.max_steps"] == 256 and small["data.batch_size"] == 16
    assert small["model.lr"] == pytest.approx(0.003 * math.sqrt(16 / 256))
    assert small["model.warmup_steps"] == round(0.05 * 256)
    assert small["model.init_logit_bias"] == pytest.approx(-math.log(16))
    assert small["seed_everything"] == small["data.seed"] == 1
    assert by[(1024, "softmax", 0)].overrides["trainer.max_steps"] == 4
    assert "model.init_logit_bias" not in by[(1024, "softmax", 0)].overrides
    # seed-major order (an interrupted sweep holds whole curves), longest cells first within a seed
    assert [c.values["seed"] for c in cells] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert cells[0].steps == 256 and cells[-1].steps == 4
    assert nested({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}


def test_global_batch_is_split_over_devices_and_exclude(tmp_path):
    config = _sweep(tmp_path, """
examples: 1024
axes:
  global_batch: [32]
  kind: {keys: [data.corruption.kind], values: [none, image]}
  p: {keys: [data.corruption.p], values: [0.0, 0.5]}
exclude:
  - {kind: none, p: 0.5}
  - {kind: image, p: 0.0}
""", base="trainer: {devices: 2, num_nodes: 2}\n")
    cells = expand(config)
    assert sorted((c.values["kind"], c.values["p"]) for c in cells) == [("image", 0.5), ("none", 0.0)]
    assert all(c.overrides["data.batch_size"] == 8 and c.steps == 32 for c in cells)
    bad = _sweep(tmp_path, "examples: 64\naxes: {global_batch: [6]}\n", base="trainer: {devices: 4}\n")
    with pytest.raises(UserInputError, match="not divisible by the 4 devices"):
        expand(bad)


def test_bad_sweep_configs_are_refused(tmp_path):
    with pytest.raises(UserInputError, match="unknown keys"):
        _sweep(tmp_path, "axes: {a: [1]}\nfoo: 1\n")
    with pytest.raises(UserInputError, match="base config not found"):
        (tmp_path / "s.yaml").write_text("base: [nope.yaml]\naxes: {a: [1]}\n")
        load_sweep(tmp_path / "s.yaml")
    with pytest.raises(UserInputError, match="list of positive numbers"):
        expand(_sweep(tmp_path, "axes: {global_batch: [0]}\n"))
    with pytest.raises(UserInputError, match="lr.rule"):
        expand(_sweep(tmp_path, "examples: 64\nlr: {base: 1, rule: cubic}\naxes: {global_batch: [8]}\n"))
    with pytest.raises(UserInputError, match="cannot evaluate"):
        expand(_sweep(tmp_path, "axes: {x: {a: {model.lr: '=nope(batch)'}}}\n"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_committed_sweeps_expand(config):
    for quick in (False, True):
        cells = expand(load_sweep(config, quick=quick))
        assert cells and all(c.steps and c.steps >= 64 for c in cells)


def test_corruption_kinds_probabilities_and_determinism(tmp_path):
    n, L, vocab = 4000, 16, 50
    images = F.normalize(torch.randn(n, 8), dim=-1)
    texts = torch.arange(n).unsqueeze(1).repeat(1, L) % vocab
    batch = {"image": images, "text": texts, "id": torch.arange(n)}
    assert Corruption("none", 0.9)(batch, 0, vocab, 1) is batch
    bank_dir = tmp_path / "noise"
    bank_dir.mkdir()
    from siglip_lightning.commands.cache_embeddings import write_shard

    write_shard(bank_dir / "noise-00000.parquet", [0, 1], ["noise"] * 2, torch.full((2, 8), 3.0))
    out = Corruption("image", 0.3, str(bank_dir))(batch, 5, vocab, 1)
    replaced = (out["image"] == 3.0).all(1)
    assert abs(replaced.float().mean().item() - 0.3) < 0.04 and torch.equal(out["text"], texts)
    assert torch.equal(out["image"][~replaced], images[~replaced]) and torch.equal(out["id"], batch["id"])
    again = Corruption("image", 0.3, str(bank_dir))(batch, 5, vocab, 1)
    assert torch.equal(again["image"], out["image"])  # a function of (seed, step): exact on resume
    assert not torch.equal(Corruption("image", 0.3, str(bank_dir))(batch, 6, vocab, 1)["image"], out["image"])
    out = Corruption("text", 0.5)(batch, 0, vocab, 1)
    changed = (out["text"] != texts).any(1)
    assert abs(changed.float().mean().item() - 0.5) < 0.05 and torch.equal(out["image"], images)
    assert (out["text"][changed][:, -1] == 1).all()  # random captions end with EOS (the pooled token)
    out = Corruption("pairing", 0.5)(batch, 0, vocab, 1)
    assert sorted(map(tuple, out["text"].tolist())) == sorted(map(tuple, texts.tolist()))
    assert 0.4 < (out["text"] != texts).any(1).float().mean().item() < 0.55
    pixels = torch.zeros(1000, 3, 4, 4)
    noisy = Corruption("image", 0.5)({"image": pixels, "text": texts[:1000]}, 0, vocab, 1)["image"]
    hit = (noisy != 0).flatten(1).any(1)
    assert 0.44 < hit.float().mean().item() < 0.56 and noisy.min() >= -1 and noisy.max() <= 1
    with pytest.raises(UserInputError, match="noise_embeddings"):
        Corruption("image", 0.5)(batch, 0, vocab, 1)
    with pytest.raises(UserInputError, match="kind must be one of"):
        Corruption("labels", 0.5)


def test_final_metrics_from_a_csv_log(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "epoch,step,train/t,retrieval/h/image_to_text_R@1,retrieval/h/text_to_image_R@1,zeroshot/s/top1,"
        "retrieval/h/en/image_to_text_R@1\n"
        "0,49,10.5,,,,\n0,99,12.25,,,,\n0,99,,0.4,0.5,0.25,0.9\n")
    assert final_metrics(tmp_path) == {"r1_i2t": 40.0, "r1_t2i": 50.0, "r1_mean": 45.0, "zeroshot_top1": 25.0,
                                       "final_t": 12.25}


def _frame():
    rows = []
    for batch, gap in ((16, 2.0), (256, 0.0)):
        for seed in (0, 1, 2):
            rows.append({"global_batch": batch, "loss": "sigmoid", "seed": seed, "r1_mean": 40 + gap + seed,
                         "zeroshot_top1": 20.0})
            rows.append({"global_batch": batch, "loss": "softmax", "seed": seed, "r1_mean": 40 + 2 * seed,
                         "zeroshot_top1": 21.0})
    return pd.DataFrame(rows)


def test_summary_paired_differences_and_table():
    config = {"report": {"x": "global_batch", "series": "loss"}}
    frame = _frame()
    summary = summarise(frame, ["global_batch", "loss"], ["r1_mean", "zeroshot_top1"])
    row = summary[(summary.global_batch == 16) & (summary.loss == "sigmoid")].iloc[0]
    assert row.r1_mean_mean == pytest.approx(43.0) and row.r1_mean_std == pytest.approx(1.0) and row.n == 3
    paired = paired_differences(frame, config)
    assert paired[(16,)] == [2.0, 1.0, 0.0] and paired[(256,)] == [0.0, -1.0, -2.0]
    table = markdown_table(summary, config, ["r1_mean", "zeroshot_top1"], paired)
    line = next(l for l in table.splitlines() if l.startswith("| 16 |"))
    assert "43.0 ± 1.0" in line and "+1.0" in line and "+2.0, +1.0, +0.0" in line and line.endswith("| 3 |")


def test_write_report_makes_table_and_plot(tmp_path):
    _frame().to_csv(tmp_path / "results.csv", index=False)
    config = {"name": "t", "report": {"x": "global_batch", "series": "loss", "logx": True, "chance": 2.0,
                                      "paper": "Paper: numbers."}}
    write_report(tmp_path, config)
    text = (tmp_path / "summary.md").read_text()
    assert "Paper: numbers." in text and "per-seed r1_mean" in text
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_paired_differences_against_a_baseline_arm_per_seed(tmp_path):
    from siglip_lightning.experiments.paired import paired_vs_baseline

    rows = [{"global_batch": 128, "objectives": arm, "seed": seed, "spatial_all": value + seed,
             "dense_colour": 50.0, "dense_colour_majority": 40.0}
            for arm, value in (("sigmoid", 30.0), ("locca", 35.0), ("all", 29.0)) for seed in (0, 1, 2)]
    rows[4]["spatial_all"] = 30.0  # locca, seed 1: 30 − 31 = −1
    for row in rows[3:6]:
        row["referring_acc"] = 20.0  # only the decoder arm has it
    frame = pd.DataFrame(rows)
    paired = paired_vs_baseline(frame, "objectives", "sigmoid", ["spatial_all"], ["objectives", "global_batch"])
    assert paired == {("locca", "spatial_all"): [(0, 5.0), (1, -1.0), (2, 5.0)],
                      ("all", "spatial_all"): [(0, -1.0), (1, -1.0), (2, -1.0)]}
    frame.to_csv(tmp_path / "results.csv", index=False)
    config = {"name": "t", "report": {"x": "objectives", "series": "global_batch",
                                      "metrics": ["spatial_all", "dense_colour", "referring_acc"],
                                      "baseline": {"column": "objectives", "value": "sigmoid"},
                                      "chance": {"spatial_all": 33.3, "dense_colour": "dense_colour_majority"}}}
    write_report(tmp_path, config)
    text = (tmp_path / "summary.md").read_text()
    assert "| locca | spatial_all | +5.0 | -1.0 | +5.0 | +3.0 | 2/3 |" in text
    assert "| all | spatial_all | -1.0 | -1.0 | -1.0 | -1.0 | 0/3 |" in text
    assert "| sigmoid | 31.0 ± 1.0 | 50.0 ± 0.0 | – | 3 |" in text  # one series: the columns are the metrics
    assert "| locca | 34.0 ± 3.6 | 50.0 ± 0.0 | 20.0 ± 0.0 | 3 |" in text
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_final_metrics_reads_the_spatial_and_dense_probes(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "step,spatial/builtin/all,spatial/builtin/relation,dense/builtin/colour,dense/builtin/colour_majority\n"
        "10,0.25,0.5,,\n20,0.5,0.625,0.75,0.6\n")
    out = final_metrics(tmp_path)
    assert out["spatial_all"] == 50.0 and out["spatial_relation"] == 62.5
    assert out["dense_colour"] == 75.0 and out["dense_colour_majority"] == 60.0
    assert "spatial_colour" not in out and "dense_shape" not in out
