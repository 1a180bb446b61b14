"""Collective helpers shared by the distributed losses.

``agree_on_batches`` runs one small all_gather before any exchange so that every rank learns every
rank's batch size (ranks may differ: a short last batch) and so that a bad input on one rank makes
every rank raise the same error instead of leaving the others blocked in a collective.
``gather_with_grad`` is an all_gather whose backward sends each rank the gradient of its rows
summed over ranks (``dist.all_gather`` itself carries no gradient).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from siglip_lightning.ranks import world_size

_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
_PROBLEMS = {
    1: "features must be 2-D [batch, dim]",
    2: "image and text features must have the same number of rows (pairs)",
    3: "image and text embedding widths differ",
    4: "empty batch: the loss needs at least one image-text pair on every rank",
    5: "features must be floating point (float32/64, float16, bfloat16) with the same dtype for image and text",
}


def _local_problem(image_features: torch.Tensor, text_features: torch.Tensor) -> int:
    if image_features.dim() != 2 or text_features.dim() != 2:
        return 1
    if image_features.shape[0] != text_features.shape[0]:
        return 2
    if image_features.shape[1] != text_features.shape[1]:
        return 3
    if image_features.shape[0] == 0:
        return 4
    if image_features.dtype not in _DTYPES or image_features.dtype != text_features.dtype:
        return 5
    return 0


def agree_on_batches(image_features: torch.Tensor, text_features: torch.Tensor, wants_grad: bool,
                     group=None) -> Tuple[List[int], bool]:
    """All ranks check their inputs together; returns (every rank's batch size, any rank wants grads).

    Raises ``ValueError`` on every rank when any rank's features cannot form a batch of pairs, or
    when ranks disagree on the embedding width or dtype.
    """
    rows = lambda t: t.shape[0] if t.dim() >= 1 else 0  # noqa: E731
    width = lambda t: t.shape[-1] if t.dim() >= 1 else 0  # noqa: E731
    dtype = _DTYPES.index(image_features.dtype) if image_features.dtype in _DTYPES else -1
    meta = torch.tensor([_local_problem(image_features, text_features), rows(image_features),
                         rows(text_features), width(image_features), width(text_features), dtype, int(wants_grad)],
                        dtype=torch.int64, device=image_features.device)
    everyone = [torch.empty_like(meta) for _ in range(world_size(group))]
    dist.all_gather(everyone, meta, group=group)
    table = torch.stack(everyone).cpu().tolist()
    for rank, (problem, n_img, n_txt, d_img, d_txt, _, _) in enumerate(table):
        if problem:
            raise ValueError(f"{_PROBLEMS[problem]}; on rank {rank}: {n_img} images of width {d_img} and "
                             f"{n_txt} texts of width {d_txt}")
    widths, dtypes = {row[3] for row in table}, {row[5] for row in table}
    if len(widths) > 1 or len(dtypes) > 1:
        raise ValueError("all ranks must pass features of the same width and dtype; got widths "
                         f"{[row[3] for row in table]} and dtypes {[str(_DTYPES[row[5]]) for row in table]}")
    return [row[1] for row in table], any(row[6] for row in table)


class GatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's ``[b_r, d]`` rows (sizes may differ); backward returns this rank's
    rows of the gradient summed over ranks."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group, sizes: List[int]) -> torch.Tensor:
        rank = dist.get_rank(group)
        ctx.group, ctx.sizes, ctx.rank = group, sizes, rank
        longest = max(sizes)
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()  # reduced in place; autograd may still hold the original
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


def gather_with_grad(tensor: torch.Tensor, sizes: List[int], group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """All ranks' rows in rank order, differentiable (see ``GatherWithGrad``)."""
    return GatherWithGrad.apply(tensor, group, sizes)
