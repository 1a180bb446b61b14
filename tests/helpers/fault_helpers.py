"""Small builders shared by the fault-tolerance tests: a tiny model and in-memory batches."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import torch
from torch.utils.data import DataLoader, Dataset

from siglip_lightning import SigLIPModule, TextTower, VisionTower


def tiny_module(**kwargs) -> SigLIPModule:
    """A SigLIPModule built in Python (not by the CLI), small enough to train on CPU in a second."""
    image = VisionTower(image_size=16, patch_size=8, width=32, layers=1, heads=2)
    text = TextTower(vocab_size=64, context_length=8, width=32, layers=1, heads=2, output_dim=32)
    kwargs.setdefault("warmup_steps", 1)
    kwargs.setdefault("total_steps", 100)
    return SigLIPModule(image, text, **kwargs)


class RandomPairs(Dataset):
    """Fixed random image-text pairs with ids (deterministic in ``seed``)."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 16, 16, generator=g)
        self.text = torch.randint(1, 64, (n, 8), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return {"image": self.images[i], "text": self.text[i], "id": torch.tensor(i)}


def pair_loader(n: int = 64, batch_size: int = 8) -> DataLoader:
    return DataLoader(RandomPairs(n), batch_size=batch_size, shuffle=False)


def read_steps(path: Path) -> List[dict]:
    """StepRecorder lines; when a resumed run repeated steps, the latest record of each step wins."""
    by_step = {}
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record
    return [by_step[k] for k in sorted(by_step)]
