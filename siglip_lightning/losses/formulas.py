"""The two losses' formulas, written once; every machinery (dense, tiled, ring) scores blocks with them.

Sigmoid (Zhai et al., ICCV 2023, eq. 1)::

    L = -(1/|B|) * sum_i sum_j log sigmoid(z_ij * (t * x_i . y_j + b)),   z_ij = +1 if i == j else -1

Note the normalisation: the sum over all |B|^2 pairs is divided by |B|, not averaged over |B|^2.
Each pair is an independent binary problem, so blocks of the logits matrix can be scored apart
and summed (the tiled and ring machinery do).

Softmax (CLIP), normalised over images and over texts::

    L = -(1 / 2|B|) * sum_i [ log softmax_j(t x_i . y_j)_i + log softmax_j(t x_j . y_i)_i ]
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


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


def softmax_rows_loss_sum(image_rows: torch.Tensor, text_rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over this block's pairs of the two cross-entropies: ``image_rows`` are t * x_i . y_j over all
    texts j, ``text_rows`` t * y_i . x_j over all images j, ``labels`` the column of each row's positive."""
    return (F.cross_entropy(image_rows, labels, reduction="sum")
            + F.cross_entropy(text_rows, labels, reduction="sum"))
