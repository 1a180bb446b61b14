"""CLIP's softmax (InfoNCE) loss (the formula is in ``formulas.py``) over the global batch.

One class, the machinery chosen at run time: on one process the dense ``b x b`` logits; on several
either a gather of every rank's embeddings with gradients (each rank scores its own rows against
all N columns: ``b x N`` logits) or, with ``ring``, the two-pass ring of ``ring_softmax.py`` whose
per-rank memory stays flat in the number of ranks.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from siglip_lightning.losses.base import ContrastiveLoss
from siglip_lightning.losses.collectives import agree_on_batches, gather_with_grad
from siglip_lightning.losses.formulas import softmax_rows_loss_sum
from siglip_lightning.losses.ring_softmax import ChunkedSoftmaxFunction


class SoftmaxLoss(ContrastiveLoss):
    """Symmetric cross-entropy over the global batch's similarity matrix (the CLIP baseline).

    With N = sum of the ranks' batch sizes and W ranks, rank r returns
    ``L_r = (W / N) * (1/2) * sum_{i on r} [CE(image_i vs all texts) + CE(text_i vs all images)]``,
    so ``mean_r L_r`` is the global formula; a rank's features receive the sum over ranks of the
    gradients, so DDP's averaging gives the global gradient, as for ``SigmoidLoss``. Ranks may hold
    different batch sizes. Init as in CLIP: t' = log(1/0.07), no bias (a constant shift cancels
    inside a softmax, so a ``logit_bias`` passed here is accepted and has no effect on the value).

    Args:
        local_negatives: score each rank's own ``b x b`` block only (the run says so once).
        ring: on several ranks, exchange blocks round a ring with running log-sum-exps instead of
            gathering all N embeddings: per-rank memory flat in W, about twice the compute and
            traffic (so the baseline can run at the sigmoid loss's batch sizes).
        bidirectional: with ``ring``, send blocks both ways at once (half the steps, ~4·b·d more memory).
    """

    init_logit_scale = math.log(1 / 0.07)
    init_logit_bias = None

    def __init__(self, local_negatives: bool = False, ring: bool = False, bidirectional: bool = False) -> None:
        super().__init__(local_negatives)
        self.ring = ring
        self.bidirectional = bidirectional

    def local_loss(self, image_features, text_features, logit_scale, logit_bias=None) -> torch.Tensor:
        logits = logit_scale * image_features @ text_features.T
        labels = torch.arange(logits.shape[0], device=logits.device)
        return softmax_rows_loss_sum(logits, logits.T, labels) / (2 * logits.shape[0])

    def global_loss(self, image_features, text_features, logit_scale, logit_bias=None) -> torch.Tensor:
        wants = self.wants_grad(image_features, text_features, logit_scale)
        sizes, want_grad = agree_on_batches(image_features, text_features, wants)
        if self.ring:
            return ChunkedSoftmaxFunction.apply(image_features, text_features, logit_scale, None, sizes,
                                                self.bidirectional, want_grad)
        world, rank = len(sizes), dist.get_rank()
        all_images = gather_with_grad(image_features, sizes)
        all_texts = gather_with_grad(text_features, sizes)
        start = sum(sizes[:rank])
        labels = torch.arange(start, start + sizes[rank], device=image_features.device)
        total = softmax_rows_loss_sum(logit_scale * image_features @ all_texts.T,
                                      logit_scale * text_features @ all_images.T, labels)
        return total * world / (2 * sum(sizes))


