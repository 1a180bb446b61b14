"""TIPS' masked prediction (Maninis et al. 2025): masked patches of the student predict the teacher's.

The student sees the teacher's global view with a fraction of its patch embeddings replaced by a
learned mask token; per example i, over its masked patches M_i,

    l_i = (1 / |M_i|) sum_{p in M_i} H(h_t(z_t[i, p]), h_s(z_s[i, p]))

with z the per-patch tokens of each tower, h the patch projection head and H the centred,
sharpened cross-entropy of ``heads.py``. SigLIP 2: 50 % masked, from 80 % of training, weight 0.25
times the size scale (B/16: 0.0625).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from siglip_lightning.errors import UserInputError
from siglip_lightning.objectives.base import Objective
from siglip_lightning.objectives.context import StepContext
from siglip_lightning.objectives.heads import ProjectionHead, distillation_cross_entropy, update_center
from siglip_lightning.objectives.views import random_patch_mask, view_generator


class MaskedPrediction(Objective):
    """TIPS: masked student patches predict the EMA teacher's patch features, through an MLP head.

    Args:
        weight: loss weight (SigLIP 2: 0.25 x size scale; B/16: 0.0625).
        start: fraction of training at which it starts (SigLIP 2: 0.8).
        stop: fraction at which it stops.
        mask_fraction: share of patches replaced by the mask token (SigLIP 2: 0.5).
        prototypes: head outputs K.
        hidden_dim: head MLP width (``None``: 4 x the tower width).
        bottleneck_dim: head bottleneck width.
        student_temp: student softmax temperature.
        teacher_temp: teacher softmax temperature.
        center_momentum: momentum of the teacher-output centre.
    """

    name = "tips"
    uses_teacher = True

    def __init__(self, weight: float = 0.25, start: float = 0.8, stop: float = 1.0, mask_fraction: float = 0.5,
                 prototypes: int = 1024, hidden_dim: Optional[int] = None, bottleneck_dim: int = 256,
                 student_temp: float = 0.1, teacher_temp: float = 0.04, center_momentum: float = 0.9) -> None:
        super().__init__(weight, start, stop)
        if not 0.0 < mask_fraction < 1.0:
            raise UserInputError(f"MaskedPrediction: mask_fraction must be in (0, 1), got {mask_fraction}")
        self.mask_fraction, self.prototypes, self.hidden_dim = mask_fraction, prototypes, hidden_dim
        self.bottleneck_dim, self.student_temp, self.teacher_temp = bottleneck_dim, student_temp, teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(prototypes))
        self.head: nn.Module = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1))

    def build(self, image_tower: nn.Module, text_tower: nn.Module) -> None:
        width = image_tower.width
        self.head = ProjectionHead(width, self.hidden_dim or 4 * width, self.bottleneck_dim, self.prototypes)
        self.mask_token = nn.Parameter(torch.randn(width) * 0.02)

    def patch_mask(self, context: StepContext, patches: int) -> torch.Tensor:
        generator = view_generator(context.step, context.rank, 2)
        return random_patch_mask(context.global_view.shape[0], patches, self.mask_fraction, generator)

    def per_example(self, context: StepContext) -> torch.Tensor:
        view = context.global_view
        _, teacher_tokens = context.teacher_output()  # [b, n, width]
        mask = self.patch_mask(context, teacher_tokens.shape[1]).to(view.device)
        tower = context.image_tower
        tokens, _ = tower.forward_tokens(view, patch_mask=mask, mask_token=self.mask_token)
        student = self.head(tokens[:, tower.num_prefix_tokens:][mask])  # [masked, K]
        teacher = context.teacher.heads[self.teacher_key](teacher_tokens[mask])
        losses = distillation_cross_entropy(student, teacher, self.center, self.student_temp, self.teacher_temp)
        update_center(self.center, teacher, self.center_momentum)
        per_row = torch.zeros(mask.shape[0], dtype=losses.dtype, device=losses.device)
        per_row.index_add_(0, mask.nonzero()[:, 0], losses)
        return per_row / mask.sum(1).clamp(min=1)
