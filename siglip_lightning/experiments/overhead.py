"""Per-step cost of a sweep cell run by ``fit`` against a plain PyTorch loop doing the same maths.

    python -m siglip_lightning.experiments.overhead CACHE [--batches 16 256] [--steps 300]

``CACHE`` is a SigLiT cache folder the sweep built (``.../siglit/cache-*``). Both paths train the
same text tower (``configs/experiments/siglit/text_tower.yaml``) with the same module, loss and
AdamW: the plain loop on in-memory, pre-tokenized tensors (what the removed hand-written loop did),
the same loop fed by the product's datamodule (streaming parquet, per-caption tokenization, shuffle
buffer, collation), and ``fit`` as a sweep cell does (that datamodule, loggers, callbacks, checkpoint
callback). So plain -> streamed is the data path's cost and streamed -> fit Lightning's. They
alternate, twice, in one process, so that all see the same machine load; the first ``warmup`` steps
are not timed. A last ``fit`` pass with Lightning's SimpleProfiler shows where the time goes.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from datetime import timedelta
from pathlib import Path

import torch
import yaml

from siglip_lightning.config_files import packaged

BASE = packaged("experiments/siglit/text_tower.yaml")


def plain_loop(cache: Path, batch: int, steps: int, warmup: int, streamed: bool = False) -> float:
    """Seconds per step of a bare loop: next batch, loss, backward, AdamW, schedule.

    The batches are in-memory, pre-tokenized tensors, or with ``streamed`` the product's datamodule's
    (as ``fit`` takes them), so that the difference to ``fit`` is Lightning's loop and callbacks alone."""
    from siglip_lightning.losses import SigmoidLoss
    from siglip_lightning.model.module import SigLIPModule
    from siglip_lightning.model.optim import warmup_cosine
    from siglip_lightning.towers import PrecomputedImageTower, TextTower

    batches = streamed_batches(cache, batch) if streamed else in_memory_batches(cache, batch)
    towers = yaml.safe_load(BASE.read_text())["model"]["text_tower"]["init_args"]
    module = SigLIPModule(PrecomputedImageTower(64), TextTower(**towers), SigmoidLoss(), lr=3e-3,
                          warmup_steps=steps // 20, total_steps=steps)
    optimizer = torch.optim.AdamW(module.parameter_groups(), betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps // 20, steps, 0.0))
    for step in range(steps + warmup):
        if step == warmup:
            start = time.perf_counter()
        loss = module.compute_loss(next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss.item()
    return (time.perf_counter() - start) / steps


def in_memory_batches(cache: Path, batch: int):
    """What the removed hand-written loop did: every pair in memory, captions tokenized once, random slices."""
    import pyarrow.parquet as pq

    from siglip_lightning.text.sentencepiece import SentencePieceTokenizer

    files = sorted((cache / "pairs").glob("train-*.parquet"))
    table = [pq.read_table(f).to_pydict() for f in files]
    images = torch.tensor([e for t in table for e in t["embedding"]])
    texts = SentencePieceTokenizer(cache / "tokenizer.model", 16)([c for t in table for c in t["text"]])
    order = torch.randperm(images.shape[0])
    for step in itertools.count():
        idx = order[(step * batch) % (images.shape[0] - batch):][:batch]
        yield {"image": images[idx], "text": texts[idx]}


def streamed_batches(cache: Path, batch: int):
    """The training batches of a sweep cell's datamodule (the base config's data settings), endlessly."""
    from siglip_lightning.data.datamodule import ImageTextDataModule

    data = dict(yaml.safe_load(BASE.read_text())["data"])
    data.update(path=str(cache / "pairs"), tokenizer_path=str(cache / "tokenizer.model"), batch_size=batch)
    datamodule = ImageTextDataModule(**data)
    datamodule.setup("fit")
    while True:
        yield from datamodule.train_dataloader()


class StepClock:
    """A callback timing training steps ``warmup + 1 ..`` (Lightning's own per-step work included)."""

    def __init__(self, warmup: int) -> None:
        from lightning.pytorch import Callback

        clock = self

        class _Clock(Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if trainer.global_step == warmup:
                    clock.start = time.perf_counter()

            def on_train_end(self, trainer, module):
                clock.end = time.perf_counter()
                clock.steps = trainer.global_step - warmup

        self.callback = _Clock()


def product_fit(cache: Path, batch: int, steps: int, warmup: int, folder: Path, profiler: bool = False):
    """Seconds per step of ``fit`` configured as a sweep cell (no evaluation: only steps are timed)."""
    from siglip_lightning.cli import cli_main
    from siglip_lightning.experiments.runner import cell_layer
    from siglip_lightning.experiments.sweep import Cell

    total = steps + warmup
    cell = Cell("overhead", {}, {"data.batch_size": batch, "trainer.max_steps": total, "model.warmup_steps": total // 20,
                                 "data.path": str(cache / "pairs"), "data.tokenizer_path": str(cache / "tokenizer.model"),
                                 "trainer.limit_val_batches": 0}, batch, total)
    folder.mkdir(parents=True, exist_ok=True)
    layer = folder / "cell.yaml"
    layer.write_text(yaml.safe_dump(cell_layer(cell, folder, evaluate_at_end=False)))
    args = ["--config", str(BASE), "--config", str(layer)]
    if profiler:
        args += ["--trainer.profiler=simple"]
    cli = cli_main(args, run=False)
    clock = StepClock(warmup)
    cli.trainer.callbacks.append(clock.callback)
    from siglip_lightning.checkpointing import ResumableCheckpoint

    cli.trainer.callbacks.append(ResumableCheckpoint(save_last=True, save_top_k=0, train_time_interval=timedelta(minutes=1)))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return (clock.end - clock.start) / clock.steps, cli.trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/overhead"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a sweep cell runs (threads: 1)
    results, load = {}, []
    for batch in args.batches:
        steps = max(20, args.steps * 16 // batch) if batch > 16 else args.steps
        plain, streamed, product = [], [], []
        for repeat in range(2):
            load.append(open("/proc/loadavg").read().split()[:3])
            plain.append(plain_loop(args.cache, batch, steps, args.warmup))
            streamed.append(plain_loop(args.cache, batch, steps, args.warmup, streamed=True))
            product.append(product_fit(args.cache, batch, steps, args.warmup, args.out / f"b{batch}_{repeat}")[0])
        results[batch] = {"steps": steps, "plain_s_per_step": [round(p, 5) for p in plain],
                          "plain_streamed_s_per_step": [round(p, 5) for p in streamed],
                          "fit_s_per_step": [round(p, 5) for p in product],
                          "ratio": round(sum(product) / sum(plain), 2),
                          "ratio_streamed_to_plain": round(sum(streamed) / sum(plain), 2),
                          "ratio_fit_to_streamed": round(sum(product) / sum(streamed), 2)}
        print(f"batch {batch}: plain {[f'{1000 * p:.2f}' for p in plain]} ms/step, plain on the datamodule's "
              f"batches {[f'{1000 * p:.2f}' for p in streamed]} ms/step, fit "
              f"{[f'{1000 * p:.2f}' for p in product]} ms/step; fit / plain {results[batch]['ratio']} "
              f"(data path {results[batch]['ratio_streamed_to_plain']}, Lightning {results[batch]['ratio_fit_to_streamed']})",
              flush=True)
    _, trainer = product_fit(args.cache, args.batches[0], args.steps, args.warmup, args.out / "profiled", profiler=True)
    load.append(open("/proc/loadavg").read().split()[:3])
    report = {"per_batch": results, "loadavg_during": load, "threads": 1}
    print(json.dumps(report, indent=1))
    (args.out / "overhead.json").write_text(json.dumps(report, indent=1))
    print(trainer.profiler.summary()[:6000])


if __name__ == "__main__":
    main()
