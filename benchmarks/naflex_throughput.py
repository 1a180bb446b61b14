"""Images/s of the NaFlex data path vs the fixed-size path, same shards, and what a NaFlex fit consumes.

1. JPEG webdataset shards (400x300 photo-like images, those of ``data_throughput.py``) through
   ``ImageTextDataModule`` with the fixed-size transform at ``side`` px and with ``data.naflex`` at the
   same number of pixels (``budget`` patches of ``patch`` px, ``side = sqrt(budget) * patch``), then
   NaFlex with a budget drawn per batch from several. Alternating repeats, same workers and batch.
2. The built-in shapes rendered at 1:2..2:1 (``configs/naflex.yaml``'s data) through the NaFlex path,
   next to the training-step rate of that config's model on this machine (one process, no loader).

    python benchmarks/naflex_throughput.py --workers 2 --samples 1024 --repeats 2
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_throughput import timed, write_shards  # noqa: E402

from siglip_lightning.data.datamodule import ImageTextDataModule  # noqa: E402
from siglip_lightning.data.naflex import NaFlexSpec  # noqa: E402
from siglip_lightning.data.synthetic import ShapesSpec  # noqa: E402


def loader(path: str, args, cache: str, naflex=None, image_size: int = 224, builtin=None, batch_size=None):
    dm = ImageTextDataModule(path=path, batch_size=batch_size or args.batch_size, num_workers=args.workers,
                             image_size=image_size, context_length=16, tokenizer_type="clip", shuffle_buffer=256,
                             cache_dir=cache, naflex=naflex, builtin=builtin or ShapesSpec())
    dm.prepare_data()
    dm.setup("fit")
    return dm.train_dataloader()


def step_rate(batch_size: int, steps: int) -> float:
    """Training steps/s x batch of configs/naflex.yaml's model on random patches at budget 16 (no loader)."""
    from siglip_lightning.losses import SigmoidLoss
    from siglip_lightning.model.module import SigLIPModule
    from siglip_lightning.towers import NaFlexVisionTower, TextTower
    from siglip_lightning.towers.patches import PatchBatch, one_image

    torch.manual_seed(0)
    module = SigLIPModule(NaFlexVisionTower(patch_size=8, width=64, layers=2, heads=4, position_grid=4),
                          TextTower(vocab_size=512, context_length=16, width=64, layers=2, heads=4, output_dim=64),
                          loss=SigmoidLoss())
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    grids = [(4, 4), (3, 5), (5, 3), (2, 7), (7, 2), (3, 4), (4, 3)]
    images = PatchBatch.stack([one_image(torch.randn(h * w, 192), (h, w)) for h, w in
                               (grids[i % len(grids)] for i in range(batch_size))])
    batch = {"image": images, "text": torch.randint(0, 512, (batch_size, 16))}
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss = module.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    side = int(math.isqrt(args.budget)) * args.patch
    small = sorted({args.budget // 4, args.budget // 2, args.budget})
    with tempfile.TemporaryDirectory() as tmp:
        _, glob, total = write_shards(Path(tmp) / "shards", args.samples, 4)
        arms = {
            f"fixed {side}x{side} (squashed)": dict(image_size=side),
            f"NaFlex budget {args.budget} x {args.patch}px": dict(naflex=NaFlexSpec(args.patch, [args.budget])),
            f"NaFlex budgets {small} per batch": dict(naflex=NaFlexSpec(args.patch, small)),
        }
        results = {name: [] for name in arms}
        for repeat in range(args.repeats):
            for name, kwargs in arms.items():
                rate, first, count = timed(loader(glob, args, tmp, **kwargs), args.batch_size)
                results[name].append(rate)
                print(f"[repeat {repeat}] {name}: {rate:.1f} img/s ({count} images, first batch {first:.1f}s)",
                      flush=True)
        print(f"\n| data path | {total} JPEG 400x300, batch {args.batch_size}, {args.workers} workers | runs |")
        print("|---|---|---|")
        for name, rates in results.items():
            print(f"| {name} | {sum(rates) / len(rates):.1f} img/s | {', '.join(f'{r:.0f}' for r in rates)} |")
        builtin = ShapesSpec(num_train=4096, num_validation=64, zeroshot_per_class=1, num_shards=4, max_aspect=2.0)
        rate, _, count = timed(loader("builtin", args, tmp, naflex=NaFlexSpec(8, [16, 32]), builtin=builtin,
                                      batch_size=128), 128)
        torch.set_num_threads(1)
        consumed = step_rate(128, args.steps)
        print(f"\nbuilt-in shapes 1:2..2:1, NaFlex budgets [16, 32] x 8px, batch 128, {args.workers} workers: "
              f"{rate:.0f} img/s ({count} images)")
        print(f"configs/naflex.yaml model, batch 128, budget-16 patches, 1 torch thread: {consumed:.0f} img/s "
              f"trained -> the loader delivers {rate / consumed:.1f}x what a step consumes")


if __name__ == "__main__":
    main()
