"""The planner checked against real steps on this CPU: per-device peak memory and FLOPs of one step.

    PYTHONPATH=. python benchmarks/plan_check.py                 # every case
    PYTHONPATH=. python benchmarks/plan_check.py --cases dense ring-ddp2 --json

Each case is a small config (written here: ViT and text towers of width 192, 64-pixel images, 256 pairs
per device, the built-in data, float32) plus overrides: the dense and the tiled sigmoid loss, softmax,
DDP on 2 gloo processes (the sigmoid ring), FSDP2 on 2 processes, gradient caching, activation
checkpointing, bf16-mixed; and with the loss's memory made large (2048 pairs per device, tiny towers)
the dense sigmoid loss on one process and the sigmoid ring, gathered softmax and softmax ring on two.
For each, ``siglip-lightning plan`` gives the planned peak and FLOPs per device; then ``siglip-lightning
fit`` runs 3 steps in a fresh process (and its ranks), and on the third a callback resets the kernel's
peak-RSS mark (``/proc/self/clear_refs``, as loss_harness.py does) and counts FLOPs with the planner's
counter. Measured peak (worst rank) = VmHWM during that step minus the host's own memory, which a GPU
would not hold: the RSS at the ``setup`` hook (interpreter, libraries, datamodule, Lightning) less the
model's tensors, plus what building the data loaders added between ``on_fit_start`` and
``on_train_start``. The peak above the process's start (everything) is printed too. glibc's mmap
threshold is fixed at 64 KiB so freed buffers leave the RSS.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20

BASE = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  precision: 32-true
  max_steps: 3
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  num_sanity_val_steps: 0
  limit_val_batches: 0
  callbacks:
    - class_path: plan_check.StepProbe
model:
  image_tower:
    class_path: siglip_lightning.VisionTower
    init_args: {image_size: 64, patch_size: 8, width: 192, layers: 2, heads: 4}
  text_tower:
    class_path: siglip_lightning.TextTower
    init_args: {vocab_size: 512, context_length: 16, width: 192, layers: 2, heads: 4, output_dim: 192}
  warmup_steps: 1
data:
  path: builtin
  batch_size: 256
  num_workers: 0
  image_size: 64
  context_length: 16
  vocab_size: 512
  shuffle_buffer: 16
  val_fraction: 0.0
  builtin: {num_train: 2048, num_validation: 64, zeroshot_per_class: 1, num_shards: 4, image_size: 64}
"""

# the loss's share of memory made large: towers of width 32 on 16-pixel images, 2048 pairs per device
LOSS_HEAVY = ["--model.image_tower.init_args.image_size=16", "--model.image_tower.init_args.width=32",
              "--model.image_tower.init_args.layers=1", "--model.text_tower.init_args.width=32",
              "--model.text_tower.init_args.layers=1", "--model.text_tower.init_args.output_dim=32",
              "--data.image_size=16", "--data.batch_size=2048", "--data.builtin.num_train=16384",
              "--data.builtin.image_size=16"]

CASES: Dict[str, List[str]] = {
    "dense": [],
    "dense-64": ["--data.batch_size=64"],  # the quick one the default test suite runs
    "tiled": ["--model.loss=siglip_lightning.SigmoidLoss", "--model.loss.init_args.tile=64"],
    "softmax": ["--model.loss=siglip_lightning.SoftmaxLoss"],
    "ring-ddp2": ["--trainer.devices=2", "--trainer.strategy=ddp"],
    "fsdp2": ["--trainer.devices=2", "--config", str(REPO / "configs/strategies/fsdp.yaml")],
    "gradcache": ["--data.batch_size=512", "--model.micro_batch_size=128"],
    "checkpointing": ["--model.image_tower.init_args.grad_checkpointing=true",
                      "--model.text_tower.init_args.grad_checkpointing=true"],
    "bf16-mixed": ["--trainer.precision=bf16-mixed"],
    "loss-heavy dense": LOSS_HEAVY,
    "loss-heavy ring-ddp2": [*LOSS_HEAVY, "--trainer.devices=2", "--trainer.strategy=ddp"],
    "loss-heavy softmax-ddp2": [*LOSS_HEAVY, "--trainer.devices=2", "--trainer.strategy=ddp",
                                "--model.loss=siglip_lightning.SoftmaxLoss"],
    "loss-heavy softmax-ring-ddp2": [*LOSS_HEAVY, "--trainer.devices=2", "--trainer.strategy=ddp",
                                     "--model.loss=siglip_lightning.SoftmaxLoss", "--model.loss.init_args.ring=true"],
}


def rss_bytes(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """VmHWM restarts from the current RSS (Linux: write 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


class StepProbe(Callback):
    """Peak RSS and FLOPs of one training step (the third: the first two warm up), into $PLAN_PROBE_OUT."""

    def __init__(self, step: int = 2) -> None:
        self.step = step

    def setup(self, trainer, pl_module, stage) -> None:
        # What the process holds besides the model's tensors: interpreter, libraries, data pipeline,
        # Lightning. Measured before DDP wraps or FSDP shards the model (configure_model comes later).
        tensors = [*pl_module.parameters(), *pl_module.buffers()]
        self.host = rss_bytes() - sum(t.numel() * t.element_size() for t in tensors)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_start = rss_bytes()

    def on_train_start(self, trainer, pl_module) -> None:
        # between fit start and train start Lightning only sets up the data loaders: host memory too
        self.train_start = rss_bytes()
        self.host += self.train_start - self.fit_start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.step:
            from siglip_lightning.plan.flops import flop_counter

            gc.collect()
            self.before_step = rss_bytes()
            self.counter = flop_counter()
            self.counter.__enter__()
            reset_peak()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx != self.step:
            return
        peak = rss_bytes("VmHWM")
        self.counter.__exit__(None, None, None)
        out = Path(os.environ["PLAN_PROBE_OUT"]) / f"rank{trainer.global_rank}.json"
        start = int(os.environ["PLAN_PROBE_START"])
        out.write_text(json.dumps({"peak_above_start": peak - start, "peak_above_host": peak - self.host,
                                   "train_start": self.train_start - start,
                                   "before_step": self.before_step - start,
                                   "flops": self.counter.get_total_flops()}))


def _warm_up() -> None:
    """Load the kernels a step uses (oneDNN, the attention and optimizer code) before the baseline."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(8, 4, 16, 16, requires_grad=True)
    conv = torch.nn.Conv2d(3, 8, 4, 4)
    loss = F.scaled_dot_product_attention(x, x, x).sum() + conv(torch.randn(2, 3, 16, 16)).sum()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss + (x @ x.transpose(-1, -2)).float().sum()
    loss.backward()
    torch.optim.AdamW(conv.parameters(), fused=True).step()


def measure_in_this_process(args: List[str]) -> None:
    """Run ``fit`` with ``args``; this process (or Lightning's child rank) records its own baseline."""
    import siglip_lightning.cli  # noqa: F401  imports before the baseline

    _warm_up()
    gc.collect()
    os.environ["PLAN_PROBE_START"] = str(rss_bytes())  # each rank process sets its own
    from siglip_lightning.cli import cli_main

    cli_main(["fit", *args])


def measure(args: List[str], threads: int = 1) -> Dict[str, int]:
    """Worst rank's measured peak and rank 0's FLOPs of one step of ``fit`` with ``args``."""
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'benchmarks'}", PLAN_PROBE_OUT=out,
                   HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   OMP_NUM_THREADS=str(threads), MALLOC_MMAP_THRESHOLD_="65536")
        env.pop("PLAN_PROBE_START", None)
        done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(args)], env=env, cwd=out,
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"fit {args} failed:\n{done.stderr[-4000:]}")
        ranks = [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank*.json"))]
    if not ranks:
        raise RuntimeError(f"fit {args} wrote no measurement")
    worst = max(ranks, key=lambda r: r["peak_above_host"])
    return {"peak": worst["peak_above_host"], "peak_above_start": worst["peak_above_start"],
            "flops": ranks[0]["flops"], "ranks": len(ranks),
            "train_start": worst["train_start"], "before_step": worst["before_step"]}


def plan(args: List[str]) -> Dict:
    from siglip_lightning.commands.plan import plan_config

    return plan_config(args)


def check(case: str, config: str) -> Dict:
    args = ["--config", config, *CASES[case]]
    planned, measured = plan(args), measure(args)
    return {"case": case, "planned_peak_mib": planned["planned peak"] / MIB,
            "measured_peak_mib": measured["peak"] / MIB,
            "measured_above_start_mib": measured["peak_above_start"] / MIB,
            "peak_ratio": planned["planned peak"] / measured["peak"], "planned_flops": planned["flops_per_step"],
            "measured_flops": measured["flops"], "ranks": measured["ranks"],
            "loss_memory_from": planned["loss_memory_from"]}


def write_config(folder: Path) -> str:
    path = folder / "plan_check.yaml"
    path.write_text(BASE)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.measure:
        return measure_in_this_process(json.loads(options.measure))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        config = write_config(Path(folder))
        if not options.json:
            print("| case | planned peak MiB | measured peak MiB | planned / measured "
                  "| measured above process start MiB "
                  "| planned FLOPs | measured FLOPs | loss memory |\n|---|---|---|---|---|---|---|---|")
        for case in options.cases:
            row = check(case, config)
            rows.append(row)
            if not options.json:
                print(f"| {case} | {row['planned_peak_mib']:.1f} | {row['measured_peak_mib']:.1f} | "
                      f"{row['peak_ratio']:.3f} | {row['measured_above_start_mib']:.1f} | "
                      f"{row['planned_flops']:.4g} | {row['measured_flops']:.4g} | "
                      f"{row['loss_memory_from']} |", flush=True)
    if options.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
