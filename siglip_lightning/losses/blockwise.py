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

from siglip_lightning import _compat

from siglip_lightning.losses.formulas import block_logits, block_loss_sum_from_logits


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


def _tile_view(flat: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A contiguous ``rows x cols`` view at the start of a reused flat buffer."""
    return flat[: rows * cols].view(rows, cols)


def _tile_loss_and_grad(x, y, scale, bias, positives, logits_flat, scratch_flat):
    """Loss sum and dlogits of one tile, written into reused buffers (no allocation per tile).

    The loss of a negative is softplus(l), of a positive softplus(l) - l, so dlogits = sigmoid(l)
    minus 1 on the positives (t * x @ y.T + b, softplus, sigmoid), with the matmul writes straight into ``logits_flat`` and softplus into ``scratch_flat``: with
    many tiles the fresh ``tile x tile`` buffers (and their page faults) cost more than the
    elementwise work itself. ``scale`` and ``bias`` are Python floats so that the matmul applies
    them (alpha, and beta = 1 over a buffer filled with b) instead of two more passes over the tile.
    """
    logits = _tile_view(logits_flat, x.shape[0], y.shape[0])
    if bias is None:
        logits.addmm_(x, y.T, beta=0, alpha=scale)  # beta = 0: the buffer's old content is ignored
    else:
        logits.fill_(bias).addmm_(x, y.T, alpha=scale)
    soft = _tile_view(scratch_flat, x.shape[0], y.shape[0])
    _compat.softplus_into(logits, soft)
    loss = soft.sum()
    if positives is not None:
        loss = loss - torch.diagonal(logits, offset=positives).sum()
    dlogits = logits.sigmoid_()
    if positives is not None:
        torch.diagonal(dlogits, offset=positives).sub_(1)
    return loss, dlogits


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
    if want_grad:  # two tile buffers reused by every tile
        size = min(tile_r, rows) * min(tile_c, cols)
        logits_flat = torch.empty(size, dtype=image_features.dtype, device=image_features.device)
        scratch_flat = torch.empty_like(logits_flat)
        scale = float(logit_scale)
        bias = None if logit_bias is None else float(logit_bias)
    for r0 in range(0, rows, tile_r):
        x = image_features[r0:r0 + tile_r]
        for c0 in range(0, cols, tile_c):
            y = text_features[c0:c0 + tile_c]
            positives = _tile_positives(diagonal_offset, r0, c0, x.shape[0], y.shape[0])
            if not want_grad:
                logits = block_logits(x, y, logit_scale, logit_bias)
                loss += block_loss_sum_from_logits(logits, positives).to(loss_dtype)
                continue
            part, dlogits = _tile_loss_and_grad(x, y, scale, bias, positives, logits_flat, scratch_flat)
            loss += part.to(loss_dtype)
            g_sum += dlogits.sum(dtype=loss_dtype)
            if image_acc is not None:
                _add(image_acc[r0:r0 + tile_r], dlogits, y)
            if text_acc is not None:
                _add(text_acc[c0:c0 + tile_c], dlogits.T, x)
    return loss, g_sum
