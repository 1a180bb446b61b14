"""CLIP's softmax (InfoNCE) loss, normalised over images and over texts:

    L = -(1 / 2|B|) * sum_i [ log softmax_j(t x_i . y_j)_i + log softmax_j(t x_j . y_i)_i ]
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from siglip_lightning.losses.base import ContrastiveLoss


class SoftmaxLoss(ContrastiveLoss):
    """Symmetric cross-entropy over the in-batch similarity matrix (the CLIP baseline).

    Init as in CLIP: t' = log(1/0.07), no bias (a constant shift cancels inside a softmax, so a
    ``logit_bias`` passed here is accepted and has no effect on the value).
    """

    init_logit_scale = math.log(1 / 0.07)
    init_logit_bias = None

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        self.check_features(image_features, text_features)
        logits = logit_scale * image_features @ text_features.T
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
