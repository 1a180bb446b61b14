"""What the objectives of one training step share, computed once and only when one asks for it."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from siglip_lightning.errors import UserInputError
from siglip_lightning.objectives.views import GLOBAL_SCALE, crop_views, view_generator


class StepContext:
    """One step's batch, the student's tokens of the un-augmented image, the views and the teacher's output.

    Args:
        image_tower: the student image tower (with ``forward_tokens`` / ``pool``).
        batch: the training batch (``image``, ``text``, optional ``regions``).
        step: the global step (seeds the views).
        rank: this process's rank (seeds the views).
        tokens: the student's ``(tokens, padding)`` of ``batch["image"]``, from the module's forward.
        teacher: the EMA teacher, if an objective uses it.
    """

    def __init__(self, image_tower: nn.Module, batch: Dict[str, Any], step: int = 0, rank: int = 0,
                 tokens: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None,
                 teacher: Optional[nn.Module] = None) -> None:
        self.image_tower, self.batch, self.step, self.rank = image_tower, batch, step, rank
        self.teacher = teacher
        self._tokens = tokens
        self._global_view: Optional[torch.Tensor] = None
        self._teacher_out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    @property
    def images(self) -> Any:
        return self.batch["image"]

    @property
    def text(self) -> torch.Tensor:
        return self.batch["text"]

    @property
    def tokens(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The student's un-pooled tokens of the un-augmented images and their padding mask."""
        if self._tokens is None:
            self._tokens = self.image_tower.forward_tokens(self.images)
        return self._tokens

    def square_images(self, what: str) -> torch.Tensor:
        if not torch.is_tensor(self.images) or self.images.dim() != 4:
            raise UserInputError(f"{what} makes its views from square images; NaFlex batches are not supported "
                                 "(SigLIP 2's NaFlex stage drops the self-distillation objectives)")
        return self.images

    @property
    def global_view(self) -> torch.Tensor:
        """One random global crop per image (teacher's view, and TIPS' masked student view)."""
        if self._global_view is None:
            images = self.square_images("self-distillation")
            self._global_view = crop_views(images, 1, view_generator(self.step, self.rank, 0), GLOBAL_SCALE)
        return self._global_view

    def teacher_output(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(pooled embedding ``[b, d]``, patch tokens ``[b, n, width]``) of the teacher on the global view."""
        if self.teacher is None:
            raise RuntimeError("an objective uses the teacher but the module holds none")
        if self._teacher_out is None:
            with torch.no_grad():
                tokens, padding = self.teacher.tower.forward_tokens(self.global_view)
                pooled = self.teacher.tower.pool(tokens, padding)
                prefix = self.teacher.tower.num_prefix_tokens
            self._teacher_out = pooled, tokens[:, prefix:]
        return self._teacher_out
