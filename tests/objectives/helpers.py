"""Tiny towers and modules with SigLIP 2's objectives, for the objective tests."""
from __future__ import annotations

import torch

from siglip_lightning import SigLIPModule, TextTower, VisionTower
from siglip_lightning.objectives import LocCaCaptioning, MaskedPrediction, SelfDistillation

VOCAB, CONTEXT, SIZE = 64, 8, 16


def tiny_towers(seed: int = 0):
    torch.manual_seed(seed)
    return (VisionTower(image_size=SIZE, patch_size=4, width=32, layers=1, heads=2),
            TextTower(vocab_size=VOCAB, context_length=CONTEXT, width=32, layers=2, heads=2, output_dim=32))


def all_objectives(start: float = 0.0):
    return [LocCaCaptioning(pad_id=0, eos_id=1),
            SelfDistillation(weight=0.25, start=start, local_crops=2, prototypes=16, bottleneck_dim=8),
            MaskedPrediction(weight=0.0625, start=start, prototypes=16, bottleneck_dim=8)]


def tiny_module(objectives=None, seed: int = 0, **kwargs) -> SigLIPModule:
    image, text = tiny_towers(seed)
    return SigLIPModule(image, text, objectives=all_objectives() if objectives is None else objectives,
                        warmup_steps=1, **kwargs)


def random_batch(rows: int = 4, seed: int = 1):
    """Images and Gemma-style captions: words >= 2, EOS 1, then pad 0 (lengths vary)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (rows, CONTEXT), generator=gen)
    lengths = torch.randint(1, CONTEXT, (rows,), generator=gen)
    for i, n in enumerate(lengths.tolist()):
        ids[i, n] = 1
        ids[i, n + 1:] = 0
    return {"image": torch.randn(rows, 3, SIZE, SIZE, generator=gen), "text": ids}
