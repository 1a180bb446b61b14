"""Evaluation under DDP: who owns which item, and putting the ranks' embeddings back in order.

Items are dealt round-robin by their global position (item ``i`` belongs to rank ``i % world``),
so every item is embedded exactly once and no rank pads its share with repeated samples. Each
embedding travels with its position, so the gathered matrix is in dataset order whatever the
number of ranks: one process and N processes see the same matrix.
"""
from __future__ import annotations


import torch
import torch.distributed as dist

from siglip_lightning.ranks import rank_and_world


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (the tensor itself on one process)."""
    _, world = rank_and_world()
    if world > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_rows(positions: torch.Tensor, rows: torch.Tensor, total: int) -> torch.Tensor:
    """``[total, d]``: every rank's ``rows`` placed at their ``positions``, on every rank.

    Ranks may hold different numbers of rows (even none): shares are padded to the largest for
    the collective and the padding is cut off again before placing, so nothing is counted twice.
    Raises if some position in ``range(total)`` is missing or was given twice.
    """
    _, world = rank_and_world()
    rows = rows.float()
    if world == 1:
        pieces = [(positions, rows)]
    else:
        shape = torch.tensor([rows.shape[0], rows.shape[1] if rows.ndim == 2 else 0], device=rows.device)
        shapes = [torch.zeros_like(shape) for _ in range(world)]
        dist.all_gather(shapes, shape)
        longest = int(max(s[0] for s in shapes))
        dim = int(max(s[1] for s in shapes))
        padded_rows = torch.zeros(longest, dim, device=rows.device)
        padded_positions = torch.full((longest,), -1, dtype=torch.long, device=rows.device)
        padded_rows[: rows.shape[0]] = rows.reshape(rows.shape[0], dim)
        padded_positions[: rows.shape[0]] = positions.to(rows.device)
        all_rows = [torch.empty_like(padded_rows) for _ in range(world)]
        all_positions = [torch.empty_like(padded_positions) for _ in range(world)]
        dist.all_gather(all_rows, padded_rows)
        dist.all_gather(all_positions, padded_positions)
        pieces = [(p[: int(s[0])], r[: int(s[0])]) for p, r, s in zip(all_positions, all_rows, shapes)]
    dim = max((r.shape[1] for _, r in pieces if r.ndim == 2), default=0)
    out = torch.zeros(total, dim, device=rows.device)
    seen = torch.zeros(total, dtype=torch.long, device=rows.device)
    for piece_positions, piece_rows in pieces:
        if piece_rows.shape[0] == 0:
            continue
        piece_positions = piece_positions.to(rows.device)
        out[piece_positions] = piece_rows
        seen.index_add_(0, piece_positions, torch.ones_like(piece_positions))
    if not bool((seen == 1).all()):
        missing, twice = int((seen == 0).sum()), int((seen > 1).sum())
        raise RuntimeError(f"gathered embeddings do not cover the {total} items once each: "
                           f"{missing} missing, {twice} given more than once")
    return out
