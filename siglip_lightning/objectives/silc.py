"""SILC's self-distillation (Naeem et al. 2024): local crops of the student match the teacher's global view.

Per example i:  l_i = (1 / V) sum_v H(h_t(g_i), h_s(x_iv))  over its V local crops x_iv, with g_i the
teacher's global view, h the projection head on the pooled image embedding and H the centred,
sharpened cross-entropy of ``heads.py``. SigLIP 2 switches it on for the last 20 % of training with
weight 1 times a size scale (B 0.25, L 0.5, So400m 1, g 0.5).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from siglip_lightning.objectives.base import Objective
from siglip_lightning.objectives.context import StepContext
from siglip_lightning.objectives.heads import ProjectionHead, distillation_cross_entropy, update_center
from siglip_lightning.objectives.views import LOCAL_SCALE, crop_views, view_generator


class SelfDistillation(Objective):
    """SILC: the student's local crops against the EMA teacher's global view, through an MLP head.

    Args:
        weight: loss weight (SigLIP 2: 1.0 x size scale; B/16: 0.25).
        start: fraction of training at which it starts (SigLIP 2: 0.8); the teacher is copied then.
        stop: fraction at which it stops.
        local_crops: student views per image (SigLIP 2: 8).
        local_size: side in pixels of the local crops (a multiple of the patch; the position grid is
            resized to theirs); ``None``: the tower's input size. Smaller crops cost far less.
        prototypes: head outputs K.
        hidden_dim: head MLP width (``None``: 4 x the embedding width).
        bottleneck_dim: head bottleneck width.
        student_temp: student softmax temperature.
        teacher_temp: teacher softmax temperature (sharper).
        center_momentum: momentum of the teacher-output centre.
    """

    name = "silc"
    uses_teacher = True

    def __init__(self, weight: float = 1.0, start: float = 0.8, stop: float = 1.0, local_crops: int = 8,
                 local_size: Optional[int] = None,
                 prototypes: int = 1024, hidden_dim: Optional[int] = None, bottleneck_dim: int = 256,
                 student_temp: float = 0.1, teacher_temp: float = 0.04, center_momentum: float = 0.9) -> None:
        super().__init__(weight, start, stop)
        self.local_crops, self.local_size = local_crops, local_size
        self.prototypes, self.hidden_dim = prototypes, hidden_dim
        self.bottleneck_dim, self.student_temp, self.teacher_temp = bottleneck_dim, student_temp, teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(prototypes))
        self.head: nn.Module = nn.Identity()

    def build(self, image_tower: nn.Module, text_tower: nn.Module) -> None:
        width = image_tower.output_dim
        self.head = ProjectionHead(width, self.hidden_dim or 4 * width, self.bottleneck_dim, self.prototypes)

    def per_example(self, context: StepContext) -> torch.Tensor:
        images = context.square_images("SelfDistillation")
        teacher_pooled, _ = context.teacher_output()
        teacher = context.teacher.heads[self.teacher_key](teacher_pooled)  # [b, K]
        local = crop_views(images, self.local_crops, view_generator(context.step, context.rank, 1), LOCAL_SCALE,
                           self.local_size)
        tower = context.image_tower
        student = self.head(tower.pool(*tower.forward_tokens(local, any_size=True)))  # [V * b, K], view-major
        student = student.reshape(self.local_crops, images.shape[0], -1)
        losses = distillation_cross_entropy(student, teacher.expand_as(student), self.center,
                                            self.student_temp, self.teacher_temp)  # [V, b]
        update_center(self.center, teacher, self.center_momentum)
        return losses.mean(0)
