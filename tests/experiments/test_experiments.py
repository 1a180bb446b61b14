"""The reproduction machinery: corruption, evaluation, grid expansion, summaries, and a tiny grid."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from siglip_lightning.errors import UserInputError
from siglip_lightning.experiments.grid import expand_grid, load_config
from siglip_lightning.experiments.report import markdown_table, summarise, write_report
from siglip_lightning.experiments.textrun import corrupt_batch, evaluate, resolve_bias

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "experiments").glob("*.yaml"))


def test_resolve_bias():
    assert resolve_bias("neglog", 256) == pytest.approx(-math.log(256))
    assert resolve_bias("paper", 16) == -10.0
    assert resolve_bias(0, 16) == 0.0 and resolve_bias(None, 16) is None


def test_corruption_probabilities_and_kinds():
    g = torch.Generator().manual_seed(0)
    n, L, vocab = 4000, 16, 50
    images = F.normalize(torch.randn(n, 8), dim=-1)
    texts = torch.arange(n).unsqueeze(1).repeat(1, L) % vocab
    bank = torch.full((7, 8), 3.0)
    same_i, same_t = corrupt_batch(images, texts, "none", 0.9, bank, vocab, 1, g)
    assert same_i is images and same_t is texts
    new_i, new_t = corrupt_batch(images, texts, "image", 0.3, bank, vocab, 1, g)
    replaced = (new_i == 3.0).all(1)
    assert abs(replaced.float().mean().item() - 0.3) < 0.04 and torch.equal(new_t, texts)
    assert torch.equal(new_i[~replaced], images[~replaced])
    new_i, new_t = corrupt_batch(images, texts, "text", 0.5, bank, vocab, 1, g)
    changed = (new_t != texts).any(1)
    assert abs(changed.float().mean().item() - 0.5) < 0.05 and torch.equal(new_i, images)
    assert (new_t[changed][:, -1] == 1).all()  # random captions end with EOS (the pooled token)
    new_i, new_t = corrupt_batch(images, texts, "pairing", 0.5, bank, vocab, 1, g)
    # a permutation of the texts: same multiset of rows, about half of them moved
    assert sorted(map(tuple, new_t.tolist())) == sorted(map(tuple, texts.tolist()))
    moved = (new_t != texts).any(1).float().mean().item()
    assert 0.4 < moved < 0.55


class _OneHotText:
    """Stands in for a trained module: embeds a caption by its first token, one-hot."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def eval(self):
        return self

    def train(self):
        return self

    def encode_text(self, tokens):
        return F.one_hot(tokens[:, 0], self.dim).float()


def test_evaluate_retrieval_and_zeroshot_against_hand_counts():
    dim, n = 12, 10
    first = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 8])  # the last two captions are identical
    tokens = torch.stack([first, torch.ones(n, dtype=torch.long)], 1)
    images = F.one_hot(torch.tensor([0, 1, 2, 3, 4, 5, 6, 9, 8, 8]), dim).float()  # image 7 matches nothing
    prompt = torch.stack([torch.tensor([0, 0, 1, 1, 2, 2]), torch.ones(6, dtype=torch.long)], 1)  # 3 classes x 2 templates
    zs_images = F.one_hot(torch.tensor([0, 1, 2, 2]), dim).float()
    data = {"eval_image": images, "eval_text": tokens, "prompt_text": prompt, "class_names": ["a", "b", "c"],
            "num_templates": 2, "zeroshot_image": zs_images, "zeroshot_label": torch.tensor([0, 1, 2, 0])}
    metrics = evaluate(_OneHotText(dim), data)
    # image->text: 9 of 10 right (images 8 and 9 both retrieve a caption equal to theirs)
    assert metrics["r1_i2t"] == pytest.approx(90.0)
    # text->image: caption 7 (token 7) matches no image; ties pick the first, still "equal caption"
    assert metrics["r1_t2i"] == pytest.approx(90.0)
    assert metrics["zeroshot_top1"] == pytest.approx(75.0)


def test_expand_grid_orders_by_seed_and_shares_the_clean_run():
    runs = expand_grid({"corruption": ["image", "text"], "corruption_p": [0.0, 0.5], "loss": ["sigmoid"],
                        "seed": [1, 0]})
    assert len(runs) == 6  # per seed: one p=0 run ("none") shared by both kinds, and two corrupted ones
    assert [r["seed"] for r in runs] == [0, 0, 0, 1, 1, 1]
    assert sum(r["corruption"] == "none" for r in runs) == 2


def test_summary_and_table_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"batch_size": b, "loss": l, "seed": s, "r1_mean": rng.normal(30, 3), "r1_i2t": 1.0, "r1_t2i": 1.0,
             "zeroshot_top1": rng.normal(20, 2), "final_t": 10.0, "seconds": 1.0}
            for b in (16, 256) for l in ("sigmoid", "softmax") for s in range(3)]
    frame = pd.DataFrame(rows)
    summary = summarise(frame, ["batch_size", "loss"], ["r1_mean", "zeroshot_top1"])
    sel = frame[(frame.batch_size == 16) & (frame.loss == "sigmoid")].r1_mean.to_numpy()
    row = summary[(summary.batch_size == 16) & (summary.loss == "sigmoid")].iloc[0]
    assert row.r1_mean_mean == pytest.approx(sel.mean()) and row.r1_mean_std == pytest.approx(sel.std(ddof=1))
    config = {"name": "t", "plot": {"x": "batch_size", "series": "loss", "logx": True}}
    table = markdown_table(summary, config, ["r1_mean"])
    other = frame[(frame.batch_size == 16) & (frame.loss == "softmax")].r1_mean.mean()
    assert f"{sel.mean() - other:+.1f}" in table.splitlines()[2]
    frame.to_csv(tmp_path / "results.csv", index=False)
    write_report(tmp_path, config)
    assert (tmp_path / "plot.png").stat().st_size > 1000 and "sigmoid − softmax" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_experiment_configs_parse(path):
    for quick in (False, True):
        config = load_config(path, quick=quick)
        assert expand_grid(config["grid"]) and config["plot"]["x"] and config["plot"]["series"]


def test_bad_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {seed: [0]}\nsetpu: {}\n")
    with pytest.raises(UserInputError, match="setpu"):
        load_config(bad)
    with pytest.raises(UserInputError, match="not found"):
        load_config(tmp_path / "missing.yaml")


TINY = """
name: tiny
workers: 1
setup: {num_train: 600, num_eval: 64, pretrain_pairs: 600, pretrain_steps: 3, pretrain_batch: 32,
        noise_images: 8, zeroshot_per_class: 1}
run: {examples: 256, text_width: 32}
grid:
  batch_size: [16, 64]
  loss: [sigmoid, softmax]
  seed: [0]
plot: {x: batch_size, series: loss, logx: true}
"""


def _run_experiment(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "siglip_lightning", "experiments", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)


def test_tiny_grid_writes_its_files(tmp_path):
    """The whole path (render, tokenizer, image tower, cache, text runs, report) on tiny sizes."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    result = _run_experiment(["--config", "tiny.yaml", "--out", "out"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 4 and set(frame.loss) == {"sigmoid", "softmax"}
    assert (frame.steps == 256 // frame.batch_size).all()
    assert frame.r1_mean.between(0, 100).all() and frame.zeroshot_top1.between(0, 100).all()
    assert (out / "plot.png").stat().st_size > 1000 and "| 16 |" in (out / "summary.md").read_text()
    # sigmoid runs start from b = -log(B)
    sig = frame[frame.loss == "sigmoid"].set_index("batch_size")
    assert sig.loc[16, "init_bias"] == pytest.approx(-math.log(16), abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["batchsize_sweep", "init_study", "noise_study"])
def test_quick_studies_write_their_files(name, tmp_path):
    """``make reproduce-<study> QUICK=1`` equivalent: the quick grid runs and writes CSV, table, plot."""
    config = REPO / "configs" / "experiments" / f"{name}.yaml"
    result = _run_experiment(["--config", str(config), "--quick", "--out", "out"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == len(expand_grid(load_config(config, quick=True)["grid"]))
    assert (out / "plot.png").stat().st_size > 1000 and "QUICK" in (out / "summary.md").read_text()
