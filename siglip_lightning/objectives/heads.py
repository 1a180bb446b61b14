"""The projection head and the teacher-student cross-entropy shared by SILC and TIPS (DINO / iBOT form).

    H(t, s) = - sum_k softmax((t - c) / tau_t)_k * log softmax(s / tau_s)_k

with c a running centre of the teacher's outputs (against collapse onto one prototype), updated
after each use as c <- m_c c + (1 - m_c) mean(teacher outputs over the global batch).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from siglip_lightning.ranks import is_distributed
from siglip_lightning.towers.layers import GELUTanh


class ProjectionHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> prototype logits (DINO's head, without weight norm).

    Args:
        in_dim: input width.
        hidden_dim: MLP hidden width.
        bottleneck_dim: width of the normalised bottleneck.
        prototypes: number of output logits.
    """

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, prototypes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), GELUTanh(), nn.Linear(hidden_dim, hidden_dim),
                                 GELUTanh(), nn.Linear(hidden_dim, bottleneck_dim))
        self.prototypes = nn.Linear(bottleneck_dim, prototypes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.mlp(x), dim=-1))


def distillation_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
                               student_temp: float, teacher_temp: float) -> torch.Tensor:
    """H(teacher, student) over the last dimension (see the module docstring); the teacher side is detached."""
    dtype = torch.promote_types(student.dtype, torch.float32)  # at least float32 under bf16
    target = F.softmax((teacher.detach().to(dtype) - center.to(dtype)) / teacher_temp, dim=-1)
    return -(target * F.log_softmax(student.to(dtype) / student_temp, dim=-1)).sum(-1)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> None:
    """c <- m c + (1 - m) * mean of ``teacher`` rows over all ranks (``teacher``: ``[..., K]``)."""
    rows = teacher.reshape(-1, teacher.shape[-1]).to(center.dtype)
    stats = torch.cat([rows.sum(0), rows.new_tensor([rows.shape[0]])])
    if is_distributed():
        dist.all_reduce(stats)
    center.mul_(momentum).add_(stats[:-1] / stats[-1].clamp(min=1), alpha=1 - momentum)
