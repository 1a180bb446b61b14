"""SigLIP's pairwise sigmoid loss (Zhai et al., ICCV 2023, eq. 1).

    L = -(1/|B|) * sum_i sum_j log sigmoid(z_ij * (t * x_i . y_j + b)),   z_ij = +1 if i == j else -1

Note the normalisation: the sum over all |B|^2 pairs is divided by |B|, not averaged over |B|^2.
Each pair is an independent binary problem, so blocks of the logits matrix can be scored apart
and summed: the chunked and tiled losses score their blocks with :func:`sigmoid_block_loss_and_grad`.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from siglip_lightning.losses.base import ContrastiveLoss


def block_logits(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: Optional[torch.Tensor],
) -> torch.Tensor:
    """t * x @ y.T + b for one block. Under autograd this is out of place; without, in place."""
    logits = image_features @ text_features.T
    if torch.is_grad_enabled():
        logits = logit_scale * logits
        return logits + logit_bias if logit_bias is not None else logits
    logits.mul_(logit_scale)
    return logits.add_(logit_bias) if logit_bias is not None else logits


def block_loss_sum_from_logits(logits: torch.Tensor, diagonal_offset: Optional[int]) -> torch.Tensor:
    """Sum of -log sigmoid(z * l) over a block of logits l; z = +1 on the positives' diagonal."""
    # All pairs are negatives (label -1) first: -log sigmoid(-l) = softplus(l).
    loss = F.softplus(logits).sum()
    if diagonal_offset is not None:
        # For a positive, swap softplus(l) for -log sigmoid(l) = softplus(-l) = softplus(l) - l.
        loss = loss - torch.diagonal(logits, offset=diagonal_offset).sum()
    return loss


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
    logits = block_logits(image_features, text_features, logit_scale, logit_bias)
    return block_loss_sum_from_logits(logits, diagonal_offset)


def sigmoid_block_loss_and_grad(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: Optional[torch.Tensor],
    diagonal_offset: Optional[int] = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`sigmoid_block_loss_sum` and d(sum)/d(logits) of the block, without autograd.

    The loss of a negative is softplus(l), of a positive softplus(l) - l, so dlogits = sigmoid(l)
    minus 1 on the positives. The logits buffer is reused for dlogits, so a block costs about two
    ``rows x cols`` buffers at its peak. The tiled and chunked losses call this block by block.
    """
    with torch.no_grad():
        logits = block_logits(image_features, text_features, logit_scale, logit_bias)
        loss = block_loss_sum_from_logits(logits, diagonal_offset)
        dlogits = logits.sigmoid_()
        if diagonal_offset is not None:
            torch.diagonal(dlogits, offset=diagonal_offset).sub_(1)
    return loss, dlogits


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
