"""A sweep launched as users launch it (``siglip-lightning experiments``): real fit runs, kill, restart.

The cells train a tiny text tower on cached embeddings of the built-in data (SigLiT, as the
committed sweeps do, shrunk), evaluated by the Retrieval callback on the cached held-out pairs.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from siglip_lightning.cli import cli_main
from siglip_lightning.commands.cache_embeddings import cache_embeddings

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    cli = cli_main(["--config", str(CONFIGS / "siglit.yaml"), "--config", str(CONFIGS / "runlocal" / "siglit.yaml"),
                    "--data.builtin.num_train=512", "--data.builtin.num_validation=64",
                    "--data.builtin.zeroshot_per_class=2", "--data.builtin.image_size=32",
                    f"--data.cache_dir={root / 'data'}"], run=False)
    cache_embeddings(cli.model.image_tower, cli.datamodule, root / "pairs", ("train", "validation"), shard_size=128)
    return root


def _write_sweep(folder: Path, cache: Path, devices: int = 1, quick_batches=(16, 32)) -> Path:
    base = folder / "base.yaml"
    strategy = "ddp" if devices > 1 else "auto"
    base.write_text(f"""
seed_everything: 0
trainer:
  accelerator: cpu
  devices: {devices}
  strategy: {strategy}
  log_every_n_steps: 5
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: siglip_lightning.eval.Retrieval
      init_args: {{name: heldout, path: {cache / 'pairs'}, split: validation, image_column: embedding,
                   caption_column: text, ks: [1]}}
model:
  image_tower: {{class_path: siglip_lightning.PrecomputedImageTower, init_args: {{dim: 32}}}}
  text_tower:
    class_path: siglip_lightning.TextTower
    init_args: {{vocab_size: 256, context_length: 8, width: 32, layers: 1, heads: 2, output_dim: 32}}
data:
  path: {cache / 'pairs'}
  image_column: embedding
  num_workers: 0
  context_length: 8
  vocab_size: 256
  shuffle_buffer: 64
  cache_dir: {cache / 'data'}
""")
    sweep = folder / "sweep.yaml"
    sweep.write_text(f"""
name: tiny
base: [{base}]
examples: 4096
lr: {{base: 0.003, ref_batch: 256, rule: sqrt}}
warmup_fraction: 0.05
axes:
  global_batch: [16, 64]
  loss:
    sigmoid: {{model.loss: {{class_path: siglip_lightning.SigmoidLoss}}, model.init_logit_bias: "=-log(batch)"}}
    softmax: {{model.loss: {{class_path: siglip_lightning.SoftmaxLoss}}}}
  seed: {{keys: [seed_everything, data.seed], values: [0]}}
workers: 1
checkpoint_every: "0:00:01"
report: {{x: global_batch, series: loss, logx: true}}
quick:
  examples: 2048
  axes:
    global_batch: {list(quick_batches)}
    loss:
      sigmoid: {{model.loss: {{class_path: siglip_lightning.SigmoidLoss}}, model.init_logit_bias: "=-log(batch)"}}
      softmax: {{model.loss: {{class_path: siglip_lightning.SoftmaxLoss}}}}
    seed: {{keys: [seed_everything, data.seed], values: [0]}}
""")
    return sweep


def _command(sweep: Path, out: Path, *extra: str):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return [sys.executable, "-m", "siglip_lightning", "experiments", "--config", str(sweep), "--quick",
            "--out", str(out), *extra], env


@pytest.mark.slow
def test_killed_quick_sweep_restarts_where_it_stopped(tmp_path, tiny_cache):
    sweep, out = _write_sweep(tmp_path, tiny_cache), tmp_path / "sweep"
    args, env = _command(sweep, out)
    runner = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    cells = out / "cells"
    deadline = time.time() + 600
    # Kill (the whole process group, as a preemption would) once one cell is finished and the next
    # one has written a checkpoint but not finished.
    while time.time() < deadline:
        done = sorted(cells.glob("*/result.json"))
        midway = [c for c in cells.glob("*/checkpoints/last.ckpt") if not (c.parents[1] / "result.json").exists()]
        if done and midway:
            break
        assert runner.poll() is None, runner.stdout.read().decode()
        time.sleep(0.2)
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()
    finished = {p.parent.name: (p.stat().st_mtime_ns, (p.parent / "metrics.csv").stat().st_mtime_ns) for p in done}
    resumed = midway[0].parents[1].name
    assert resumed not in finished

    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(finished)} finished before" in result.stdout
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["cell"] for r in rows) == sorted(p.name for p in cells.iterdir())
    assert len(rows) == 4 and len({r["cell"] for r in rows}) == 4  # every cell once
    for name, stamps in finished.items():  # finished cells were not trained again
        folder = cells / name
        assert (folder / "result.json").stat().st_mtime_ns == stamps[0]
        assert (folder / "metrics.csv").stat().st_mtime_ns == stamps[1]
        assert (folder / "fit.log").read_text().count("=== ") == 1
    log = (cells / resumed / "fit.log").read_text()
    entries = log.split("=== ")[1:]  # the killed fit, the resumed one, and a validate if it was killed between
    assert len(entries) in (2, 3) and "--ckpt_path" in entries[1], entries  # its last checkpoint and its evaluation
    assert len(entries) == 2 or " validate " in entries[2]
    assert "Restoring states from the checkpoint" in log or "Restored all states" in log
    for row in rows:
        assert 0 <= float(row["r1_mean"]) <= 100 and int(row["steps"]) == 2048 // int(row["global_batch"])
    assert (out / "plot.png").exists() and "sigmoid − softmax" in (out / "summary.md").read_text()
    # each cell is an ordinary run folder: the config fit saved, a checkpoint, TensorBoard logs
    folder = cells / rows[0]["cell"]
    assert (folder / "config.yaml").exists() and (folder / "checkpoints" / "last.ckpt").exists()
    assert list((folder / "tb").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_sweep_cells_run_on_two_processes(tmp_path, tiny_cache):
    """--base with devices: 2 (DDP, gloo on CPU): global_batch is split over the two ranks."""
    sweep, out = _write_sweep(tmp_path, tiny_cache, devices=2, quick_batches=(32,)), tmp_path / "sweep"
    args, env = _command(sweep, out)
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    for cell in (out / "cells").iterdir():
        saved = (cell / "config.yaml").read_text()
        assert "batch_size: 16" in saved and "devices: 2" in saved
        row = json.loads((cell / "result.json").read_text())["row"]
        assert row["steps"] == 2048 // 32 and 0 <= row["r1_mean"] <= 100


@pytest.mark.parametrize("name", ["scratch_sweep", "scratch_sweep_long"])
def test_committed_from_scratch_sweep_cells_fit_through_the_cli(tmp_path, name):
    """A cell of each loss of the committed from-scratch sweeps, as the runner writes it (base configs +
    the cell's layer), run by ``fit`` for two steps on less built-in data, with its evaluation."""
    from siglip_lightning.experiments.runner import cell_command, cell_layer
    from siglip_lightning.experiments.sweep import expand, load_sweep
    from tests.conftest import TINY_DATA, TINY_TRAINER

    import yaml

    config = load_sweep(CONFIGS / "experiments" / f"{name}.yaml")
    first = {}
    for cell in expand(config):
        first.setdefault(cell.values["loss"], cell)
    assert set(first) == {"sigmoid", "softmax"}
    for loss, cell in first.items():
        folder = tmp_path / cell.name
        folder.mkdir()
        layer = folder / "sweep_cell.yaml"
        layer.write_text(yaml.safe_dump(cell_layer(cell, folder, evaluate_at_end=True)))
        args = cell_command(config["base"], layer, [], None)
        cli = cli_main(args + [*TINY_DATA, *TINY_TRAINER, f"--data.cache_dir={tmp_path / 'data'}"])
        metrics = cli.trainer.callback_metrics
        assert cli.trainer.global_step == 2 and type(cli.model.loss).__name__.lower().startswith(loss)
        for key in ("retrieval/heldout/image_to_text_R@1", "zeroshot/shapes/top1"):
            assert key in metrics, (name, loss, sorted(metrics))
