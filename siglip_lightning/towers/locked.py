"""A locked tower (LiT / SigLiT): frozen weights, always in eval mode, run without autograd."""
from __future__ import annotations

import torch
from torch import nn


class LockedTower(nn.Module):
    """Wraps a (pre-trained) tower so that training never changes it.

    Its parameters get ``requires_grad=False`` (so the optimizer skips them), it stays in eval mode
    when the module is put in train mode (dropout/batch-norm statistics are frozen too), and its
    forward runs under ``torch.no_grad()``, so no activations are kept for backward.

    Args:
        tower: the tower to lock, e.g. ``siglip_lightning.HFVisionTower``.
    """

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self.tower.requires_grad_(False)
        self.tower.eval()

    def train(self, mode: bool = True) -> "LockedTower":
        super().train(mode)
        self.tower.eval()
        return self

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.tower(inputs)


def unwrap(tower: nn.Module) -> nn.Module:
    """The tower inside any LockedTower wrappers."""
    while isinstance(tower, LockedTower):
        tower = tower.tower
    return tower
