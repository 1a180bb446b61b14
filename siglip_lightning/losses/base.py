"""The one interface every contrastive loss implements, and the prologue they share.

``loss(image_features, text_features, logit_scale, logit_bias=None) -> scalar`` on this rank's
L2-normalised embeddings ``[b, d]`` (row i of one paired with row i of the other); ``logit_scale`` is
t = exp(t'), as in open_clip. A loss scores the negatives of the *global* batch (every rank's
pairs) unless it is built with ``local_negatives=True``; it picks the machinery by the world size
at run time: on one process :meth:`local_loss`, on several :meth:`global_loss`.
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Tuple

import torch
from torch import nn

from siglip_lightning.ranks import world_size

log = logging.getLogger("siglip_lightning.losses")


class ContrastiveLoss(nn.Module):
    """Base class: validation, the t/b prologue and the choice between local and global machinery.

    Subclasses state the init of t' = log t and of the bias b that the paper recommends for them,
    so the module can initialise its learnable scalars from the loss, and implement
    :meth:`local_loss` (one process's batch) and :meth:`global_loss` (all ranks' batches; each rank
    returns its share L_r, and the mean of the shares over ranks is the global loss).

    Args:
        local_negatives: score each rank's own ``b x b`` block only, as if every device trained
            alone (on D devices that sees D·b² of the (D·b)² pairs: not the paper's batch). Off by
            default; when on under several processes the run says so once in its log.
    """

    #: initial value of t' (t = exp(t')); subclasses override.
    init_logit_scale: float = math.log(10.0)
    #: initial value of the bias b; ``None`` means the loss takes no bias.
    init_logit_bias: Optional[float] = None

    def __init__(self, local_negatives: bool = False) -> None:
        super().__init__()
        self.local_negatives = local_negatives
        self._said_local = False

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        logit_scale, logit_bias = self.scalars(image_features, logit_scale, logit_bias)
        world = world_size()
        if world > 1 and not self.local_negatives:
            return self.global_loss(image_features, text_features, logit_scale, logit_bias)
        if world > 1:
            self._say_local(world, image_features.shape[0])
        self.check_features(image_features, text_features)
        return self.local_loss(image_features, text_features, logit_scale, logit_bias)

    def local_loss(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                   logit_bias: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def global_loss(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                    logit_bias: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def scalars(image_features: torch.Tensor, logit_scale, logit_bias) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """t and b as tensors on the features' device (Python numbers are accepted)."""
        logit_scale = torch.as_tensor(logit_scale, device=image_features.device)
        if logit_bias is not None:
            logit_bias = torch.as_tensor(logit_bias, device=image_features.device)
        return logit_scale, logit_bias

    @staticmethod
    def wants_grad(*tensors: Optional[torch.Tensor]) -> bool:
        return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)

    def _say_local(self, world: int, rows: int) -> None:
        if not self._said_local:
            self._said_local = True
            log.warning("%s(local_negatives=True): each of the %d ranks scores only its own %d x %d block of pairs, "
                        "not the global batch of %d (the paper's loss needs local_negatives=false)",
                        type(self).__name__, world, rows, rows, world * rows)

    @staticmethod
    def check_features(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
        """Refuse inputs that cannot be a batch of pairs, with an error that says why."""
        if image_features.dim() != 2 or text_features.dim() != 2:
            raise ValueError(
                "features must be 2-D [batch, dim]; got image "
                f"{tuple(image_features.shape)} and text {tuple(text_features.shape)}"
            )
        if image_features.shape[0] != text_features.shape[0]:
            raise ValueError(
                f"image and text features must have the same number of rows (pairs); got "
                f"{image_features.shape[0]} images and {text_features.shape[0]} texts"
            )
        if image_features.shape[1] != text_features.shape[1]:
            raise ValueError(
                f"image and text embedding widths differ: {image_features.shape[1]} vs "
                f"{text_features.shape[1]}"
            )
        if image_features.shape[0] == 0:
            raise ValueError("empty batch: the loss needs at least one image-text pair")
