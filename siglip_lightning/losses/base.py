"""The one interface every contrastive loss implements."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


class ContrastiveLoss(nn.Module):
    """Base class: ``loss(image_features, text_features, logit_scale, logit_bias=None) -> scalar``.

    ``image_features`` and ``text_features`` are this rank's L2-normalised embeddings ``[b, d]``;
    row i of one is paired with row i of the other. ``logit_scale`` is t (already exponentiated,
    as in open_clip). Subclasses state the init of t' = log t and of the bias b that the paper
    recommends for them, so the module can initialise its learnable scalars from the loss.
    """

    #: initial value of t' (t = exp(t')); subclasses override.
    init_logit_scale: float = math.log(10.0)
    #: initial value of the bias b; ``None`` means the loss takes no bias.
    init_logit_bias: Optional[float] = None

    @property
    def uses_bias(self) -> bool:
        return self.init_logit_bias is not None

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
