"""The EMA teacher of self-distillation (SILC) and masked prediction (TIPS).

A copy of the image tower and of each distillation head that receives no gradient. It is copied
from the student when the first teacher objective switches on (``initialised`` marks it, so a
resumed run does not copy again), then after each optimizer step moves towards the student:

    theta_t <- m * theta_t + (1 - m) * theta_s.

It is a registered submodule of the ``SigLIPModule``, so checkpoints save and restore it exactly, and
it is never exported (export writes the two towers only).
"""
from __future__ import annotations

import copy
from typing import Dict, Iterator, Tuple

import torch
from torch import nn

from siglip_lightning.errors import UserInputError


class EMATeacher(nn.Module):
    """A no-gradient copy of ``image_tower`` and ``heads``, moved by an exponential moving average.

    Args:
        image_tower: the student image tower.
        heads: the student heads of the objectives that use the teacher, by key.
        momentum: m in theta_t <- m theta_t + (1 - m) theta_s.
    """

    def __init__(self, image_tower: nn.Module, heads: Dict[str, nn.Module], momentum: float) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise UserInputError(f"model.teacher_momentum must be in [0, 1), got {momentum}")
        if not hasattr(image_tower, "forward_tokens"):
            raise UserInputError(f"the teacher objectives need an image tower with forward_tokens (VisionTower, "
                                 f"NaFlexVisionTower); got {type(image_tower).__name__}")
        self.momentum = momentum
        self.tower = copy.deepcopy(image_tower).requires_grad_(False)
        self.heads = nn.ModuleDict({k: copy.deepcopy(h).requires_grad_(False) for k, h in heads.items()})
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def pairs(self, image_tower: nn.Module, heads: Dict[str, nn.Module]) -> Iterator[Tuple[nn.Module, nn.Module]]:
        """(teacher part, student part) for the tower and every head."""
        yield self.tower, image_tower
        for key, head in heads.items():
            yield self.heads[key], head

    @torch.no_grad()
    def copy_from(self, image_tower: nn.Module, heads: Dict[str, nn.Module]) -> None:
        """Become the student. Outside forward / backward: under FSDP2 the parameters are then the local
        shards, which this copies (``state_dict`` would re-register them and upset an ongoing forward)."""
        for teacher, student in self.pairs(image_tower, heads):
            for t, s in zip([*teacher.parameters(), *teacher.buffers()], [*student.parameters(), *student.buffers()]):
                t.data.copy_(s.data)
        self.initialised.fill_(True)

    @torch.no_grad()
    def update(self, image_tower: nn.Module, heads: Dict[str, nn.Module]) -> None:
        """One EMA step towards the student (after an optimizer step)."""
        m = self.momentum
        for teacher, student in self.pairs(image_tower, heads):
            t_params = [p.data for p in teacher.parameters()]
            s_params = [p.data.to(t.dtype) for p, t in zip(student.parameters(), t_params)]
            torch._foreach_mul_(t_params, m)
            torch._foreach_add_(t_params, s_params, alpha=1.0 - m)
            for t, s in zip(teacher.buffers(), student.buffers()):
                t.copy_(s)
