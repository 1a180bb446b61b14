"""Score one block of the sigmoid loss tile by tile and add its feature gradients to accumulators.

Shared by the tiled loss (one block: the whole batch) and the chunked loss (one block per ring
step). With G = d(loss sum)/d(logits) of a tile, the gradients of the sum are

    d/dx = t * G @ y,   d/dy = t * G.T @ x,   d/dt = sum_i x_i . (G @ y)_i,   d/db = sum(G)

so the accumulators hold the raw ``G @ y`` and ``G.T @ x``; the caller multiplies by t once at
the end and gets d/dt from the image accumulator (``(x * acc_x).sum()``) without a per-tile pass.
"""
from __future__ import annotations

from typing import Optional

import torch

from siglip_lightning.losses.sigmoid import block_logits, block_loss_sum_from_logits, sigmoid_block_loss_and_grad


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """16-bit features accumulate their gradients in float32 (sums over many tiles)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _tile_positives(diagonal_offset: Optional[int], row0: int, col0: int, rows: int, cols: int) -> Optional[int]:
    """Offset of the positives' diagonal inside a tile, or None when it misses the tile."""
    if diagonal_offset is None:
        return None
    offset = row0 + diagonal_offset - col0
    return offset if -rows < offset < cols else None


def _add(acc: torch.Tensor, lhs: torch.Tensor, rhs: torch.Tensor) -> None:
    if acc.dtype == lhs.dtype:
        acc.addmm_(lhs, rhs)
    else:
        acc.add_(lhs @ rhs)


@torch.no_grad()
def sigmoid_block_accumulate(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: Optional[torch.Tensor],
    diagonal_offset: Optional[int],
    tile: Optional[int],
    image_acc: Optional[torch.Tensor],
    text_acc: Optional[torch.Tensor],
    loss_dtype: torch.dtype,
) -> tuple:
    """Loss sum of the block ``image_features x text_features`` and, if accumulators are given,
    add ``G @ y`` to ``image_acc`` and ``G.T @ x`` to ``text_acc`` tile by tile.

    Args:
        image_features: ``[r, d]`` rows of the block.
        text_features: ``[c, d]`` columns of the block.
        logit_scale: t.
        logit_bias: b, or None.
        diagonal_offset: column ``i + offset`` is row i's positive; None: negatives only.
        tile: largest tile side; None scores the block in one piece.
        image_acc: ``[r, d]`` accumulator of ``G @ y`` or None (no gradients wanted).
        text_acc: ``[c, d]`` accumulator of ``G.T @ x`` or None.
        loss_dtype: dtype of the returned sums.

    Returns:
        ``(loss_sum, dlogits_sum)``: 0-dim tensors; ``dlogits_sum`` (sum of G, i.e. d/db) is None
        when no gradients are wanted.
    """
    rows, cols = image_features.shape[0], text_features.shape[0]
    tile_r = rows if tile is None else tile
    tile_c = cols if tile is None else tile
    want_grad = image_acc is not None or text_acc is not None
    loss = torch.zeros((), dtype=loss_dtype, device=image_features.device)
    g_sum = torch.zeros((), dtype=loss_dtype, device=image_features.device) if want_grad else None
    for r0 in range(0, rows, tile_r):
        x = image_features[r0:r0 + tile_r]
        for c0 in range(0, cols, tile_c):
            y = text_features[c0:c0 + tile_c]
            positives = _tile_positives(diagonal_offset, r0, c0, x.shape[0], y.shape[0])
            if not want_grad:
                logits = block_logits(x, y, logit_scale, logit_bias)
                loss += block_loss_sum_from_logits(logits, positives).to(loss_dtype)
                continue
            part, dlogits = sigmoid_block_loss_and_grad(x, y, logit_scale, logit_bias, positives)
            loss += part.to(loss_dtype)
            g_sum += dlogits.sum(dtype=loss_dtype)
            if image_acc is not None:
                _add(image_acc[r0:r0 + tile_r], dlogits, y)
            if text_acc is not None:
                _add(text_acc[c0:c0 + tile_c], dlogits.T, x)
    return loss, g_sum
