"""Padding waste of NaFlex batches on photo aspect ratios, at SigLIP 2's budgets (issue 24).

A NaFlex batch is padded to its longest sequence (``data.naflex.pad_to: longest``) or to the budget
(``pad_to: budget``). How much of the batch is padding depends only on the patch counts of its images,
which the loader computes with ``grid_for_budget`` (``transformers``' rule): this script draws image
sizes from aspect-ratio mixes (photos: 4:3, 3:4, 16:9, 9:16, 1:1; and with panoramas 3:1, 1:3, 4:1,
1:4), each side jittered by up to ±8% as cropped photos are, and reports the padded share of patch
slots for each budget and batch size. A first part checks, on real PIL images, that the loader's
collate pads exactly as computed here.

    python benchmarks/naflex_padding.py --batches 200
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from siglip_lightning.data.naflex import NaFlexCollate, NaFlexTransform, grid_for_budget  # noqa: E402

PHOTOS = {"4:3": (3, 4), "3:4": (4, 3), "16:9": (9, 16), "9:16": (16, 9), "1:1": (1, 1)}
PANORAMAS = {"3:1": (1, 3), "1:3": (3, 1), "4:1": (1, 4), "1:4": (4, 1)}
MIXES = {"photos": PHOTOS, "photos + panoramas": {**PHOTOS, **PANORAMAS}}


def draw_size(rng: random.Random, mix: dict) -> tuple:
    """(height, width) of a photo of a random aspect of ``mix``, about 0.3-2 megapixels, sides jittered."""
    h, w = mix[rng.choice(sorted(mix))]
    scale = rng.uniform(500, 1400) / max(h, w)
    return (max(1, round(h * scale * rng.uniform(0.92, 1.08))), max(1, round(w * scale * rng.uniform(0.92, 1.08))))


def patches(size: tuple, patch: int, budget: int) -> int:
    height, width = grid_for_budget(*size, patch, budget)
    return (height // patch) * (width // patch)


def padded_share(counts: list, pad_to: str, budget: int) -> float:
    slots = len(counts) * (budget if pad_to == "budget" else max(counts))
    return 1.0 - sum(counts) / slots


def check_against_the_collate(patch: int = 16, budget: int = 64, n: int = 12) -> None:
    """The collate's padded batch has exactly the slots this script counts."""
    rng = random.Random(1)
    sizes = [draw_size(rng, MIXES["photos + panoramas"]) for _ in range(n)]
    small = [(max(1, h // 8), max(1, w // 8)) for h, w in sizes]  # decoded small: same aspect, fast
    transform = NaFlexTransform(patch, budget)
    samples = [{"image": transform(Image.new("RGB", (w, h), (i * 20 % 255, 90, 160))), "text": torch.zeros(4),
                "skipped": {}} for i, (h, w) in enumerate(small)]
    batch = NaFlexCollate(transform)(samples)["image"]
    counts = [patches(size, patch, budget) for size in small]
    assert batch.mask.shape == (n, max(counts)) and batch.mask.sum().item() == sum(counts), (batch.mask.shape, counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--budgets", type=int, nargs="+", default=[256, 576, 1024])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--batches", type=int, default=200, help="random batches per cell")
    args = parser.parse_args()
    check_against_the_collate()
    print("collate check: the loader pads exactly the counted slots")
    print(f"| mix | budget | batch | padded, pad_to=longest | padded, pad_to=budget |")
    print("|---|---:|---:|---:|---:|")
    for name, mix in MIXES.items():
        for budget in args.budgets:
            for batch in args.batch_sizes:
                rng = random.Random(0)
                longest = budget_pad = 0.0
                for _ in range(args.batches):
                    counts = [patches(draw_size(rng, mix), args.patch, budget) for _ in range(batch)]
                    longest += padded_share(counts, "longest", budget)
                    budget_pad += padded_share(counts, "budget", budget)
                print(f"| {name} | {budget} | {batch} | {100 * longest / args.batches:.2f}% | "
                      f"{100 * budget_pad / args.batches:.2f}% |")


if __name__ == "__main__":
    main()
