"""SigLIP's pairwise sigmoid loss (Zhai et al., ICCV 2023, eq. 1).

    L = -(1/|B|) * sum_i sum_j log sigmoid(z_ij * (t * x_i . y_j + b)),   z_ij = +1 if i == j else -1

Note the normalisation: the sum over all |B|^2 pairs is divided by |B|, not averaged over |B|^2.
Each pair is an independent binary problem, so blocks of the logits matrix can be scored apart
and summed: the chunked and tiled losses call :func:`sigmoid_block_loss_sum` on their blocks.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from siglip_lightning.losses.base import ContrastiveLoss


def sigmoid_block_loss_sum(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: Optional[torch.Tensor],
    diagonal_offset: Optional[int] = 0,
) -> torch.Tensor:
    """Sum of -log sigmoid(z * logits) over one block of image rows x text columns.

    ``diagonal_offset`` says where the positive pairs are: column ``i + diagonal_offset`` is the
    positive of row ``i``; ``None`` means the block holds negatives only.
    """
    logits = logit_scale * image_features @ text_features.T
    if logit_bias is not None:
        logits = logits + logit_bias
    # All pairs are negatives (label -1) first: -log sigmoid(-l) = softplus(l).
    loss = F.softplus(logits).sum()
    if diagonal_offset is not None:
        positives = torch.diagonal(logits, offset=diagonal_offset)
        # For a positive, swap softplus(l) for -log sigmoid(l) = softplus(-l) = softplus(l) - l.
        loss = loss - positives.sum()
    return loss


class SigmoidLoss(ContrastiveLoss):
    """Dense sigmoid loss on this rank's batch (the paper's eq. 1).

    Holds the full ``b x b`` logits matrix; see ``ChunkedSigmoidLoss`` for the multi-device ring and
    ``TiledSigmoidLoss`` for a single device without the full matrix.
    Init as in the paper (Table 4): t' = log 10, b = -10.
    """

    init_logit_scale = math.log(10.0)
    init_logit_bias = -10.0

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        self.check_features(image_features, text_features)
        total = sigmoid_block_loss_sum(image_features, text_features, logit_scale, logit_bias, 0)
        return total / image_features.shape[0]
