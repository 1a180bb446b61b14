"""CLIP's softmax (InfoNCE) loss, normalised over images and over texts:

    L = -(1 / 2|B|) * sum_i [ log softmax_j(t x_i . y_j)_i + log softmax_j(t x_j . y_i)_i ]
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from siglip_lightning.losses.base import ContrastiveLoss
from siglip_lightning.losses.distributed import agree_on_batches, gather_with_grad, world_of


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


class DistributedSoftmaxLoss(SoftmaxLoss):
    """The CLIP loss over all ranks' pairs: each rank scores its own rows against everyone's.

    Every rank gathers all image and text embeddings (with gradient) and computes only its local
    rows of the two cross-entropies: ``b x N`` logits per direction instead of ``N x N``. With
    N = sum of the batch sizes and W ranks, rank r returns
    ``L_r = (W / N) * (1/2) * sum_{i on r} [CE(image_i vs all texts) + CE(text_i vs all images)]``,
    so ``mean_r L_r`` is the global formula; a rank's features receive the sum over ranks of the
    gradients (the gather's backward), so DDP's averaging gives the global gradient, as for
    ``ChunkedSigmoidLoss``. Ranks may hold different batch sizes. With one process it is
    ``SoftmaxLoss``. Init as in CLIP: t' = log(1/0.07), no bias.
    """

    def __init__(self) -> None:
        super().__init__()
        #: process group; None is the default (whole world).
        self.group = None

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        world = world_of(self.group)
        if world == 1:
            return super().forward(image_features, text_features, logit_scale, logit_bias)
        sizes, _ = agree_on_batches(image_features, text_features, False, self.group)
        rank = torch.distributed.get_rank(self.group)
        all_images = gather_with_grad(image_features, sizes, self.group)
        all_texts = gather_with_grad(text_features, sizes, self.group)
        start = sum(sizes[:rank])
        labels = torch.arange(start, start + sizes[rank], device=image_features.device)
        image_rows = logit_scale * image_features @ all_texts.T
        text_rows = logit_scale * text_features @ all_images.T
        total = F.cross_entropy(image_rows, labels, reduction="sum") + F.cross_entropy(text_rows, labels, reduction="sum")
        return total * world / (2 * sum(sizes))
