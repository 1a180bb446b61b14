"""The tower contract: what every tower provides, and the one place that reads it.

A tower is any ``nn.Module`` whose forward maps a batch of inputs to embeddings ``[b, output_dim]``
(before L2 normalisation, which the model applies). Besides forward, the model and the checks
that compare the towers with the data read these attributes; a tower that lacks one is simply not
checked on it:

- ``output_dim``: width of the embeddings; the image and the text tower must agree.
- ``image_size``: side in pixels of the square images an image tower takes.
- ``context_length``: tokens per caption a text tower takes.
- ``vocab_size``: ids a text tower can embed (the tokenizer's vocabulary must fit in it).
- ``patch_size``: side in pixels of an image tower's patches (NaFlex data cuts patches of that side).

Wrappers (``LockedTower``) are looked through, so a locked tower has its inner tower's contract.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, runtime_checkable

import torch
from torch import nn

from siglip_lightning.towers.locked import unwrap

CONTRACT = ("output_dim", "image_size", "context_length", "vocab_size", "patch_size")


@runtime_checkable
class Tower(Protocol):
    """The typing view of a tower: callable on a batch, with an embedding width."""

    output_dim: int

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class TowerSpec:
    """The contract attributes of one tower; ``None`` where the tower does not say."""

    output_dim: Optional[int] = None
    image_size: Optional[int] = None
    context_length: Optional[int] = None
    vocab_size: Optional[int] = None
    patch_size: Optional[int] = None


def spec_of(tower: nn.Module) -> TowerSpec:
    """Read ``tower``'s contract attributes (through any ``LockedTower`` wrappers)."""
    inner = unwrap(tower)
    values = {}
    for name in CONTRACT:
        value = getattr(inner, name, None)
        values[name] = value[0] if isinstance(value, (tuple, list)) else value
    return TowerSpec(**values)
