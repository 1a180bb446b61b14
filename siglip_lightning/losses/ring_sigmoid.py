"""The paper's chunked sigmoid loss (Zhai et al. 2023, §3.3, Fig. 1) over torch.distributed.

Each of W ranks holds b image-text pairs. Step 0 scores the local ``b x b`` block (positives on
the diagonal); then text blocks travel around the ring (P2P ``batch_isend_irecv``, one direction
or both at once) and each rank scores its images against every visiting block, all negatives.

Memory stays O(b² + b·d) per rank whatever W is: the feature gradients are computed block by
block during the forward pass (``blockwise.py``), and every travelling text block carries its
gradient accumulator, to which each visited rank adds; after the last hop the accumulator goes
straight home to the block's owner. Nothing per block is kept for backward: backward only scales
the stored gradients. The next block's transfer is posted before the current block is scored,
so it overlaps the compute; the accumulator follows its block one step behind.

Convention (the same as open_clip's ``SigLipLoss``): with N = sum of the ranks' batch sizes, rank
r returns ``L_r = (W / N) * sum_{i on r} sum_j l_ij``, so ``mean_r L_r`` is the global loss
``(1/N) sum_ij l_ij``. When every rank backpropagates its own ``L_r``, a rank's features get
``d(sum_r L_r)/d(features)`` = W x the global gradient; DDP's averaging over ranks divides the
parameter gradients by W, which gives exactly the global loss's gradient. t and b get
``dL_r/dt`` per rank, whose DDP average is the global one. No extra factor W is needed.
Assumption: every rank backpropagates the same multiple of its loss (1, or the same
gradient-accumulation / AMP scale), as Lightning and DDP do; the travelling accumulators mix the
contributions of all ranks before backward sees the incoming gradient.
"""
from __future__ import annotations

from typing import List

import torch
import torch.distributed as dist

from siglip_lightning.losses.blockwise import accumulator_dtype, sigmoid_block_accumulate
from siglip_lightning.losses.ring import Stream, walk_ring
from siglip_lightning.losses.tiled import finish_gradients, scale_saved_gradients


def make_streams(rank: int, sizes: List[int], bidirectional: bool, group, first_index: int = 0) -> List[Stream]:
    """One stream of W-1 hops, or two (right: ceil((W-1)/2) hops, left: floor((W-1)/2))."""
    others, i = len(sizes) - 1, first_index
    if not bidirectional or others < 2:
        return [Stream(i, +1, others, rank, sizes, group)]
    return [Stream(i, +1, (others + 1) // 2, rank, sizes, group), Stream(i + 1, -1, others // 2, rank, sizes, group)]


class ChunkedSigmoidFunction(torch.autograd.Function):
    """forward(x, y, t, b, group, sizes, bidirectional, tile, want_grad) -> this rank's L_r."""

    @staticmethod
    def forward(ctx, image_features, text_features, logit_scale, logit_bias, group, sizes, bidirectional, tile,
                want_grad):
        rank = dist.get_rank(group)
        norm = sum(sizes) / len(sizes)
        acc = accumulator_dtype(image_features.dtype)
        zeros = lambda t: torch.zeros(t.shape, dtype=acc, device=t.device)  # noqa: E731
        image_acc = zeros(image_features) if want_grad else None
        home_acc = zeros(text_features) if want_grad else None  # every rank's share of d/d(my texts)

        totals = {}

        def local():
            totals["loss"], totals["g"] = sigmoid_block_accumulate(
                image_features, text_features, logit_scale, logit_bias, 0, tile, image_acc, home_acc, acc)

        def score(block, share):
            part, g_part = sigmoid_block_accumulate(
                image_features, block[0], logit_scale, logit_bias, None, tile, image_acc, share, acc)
            totals["loss"] += part
            if want_grad:
                totals["g"] += g_part

        walk_ring(make_streams(rank, sizes, bidirectional, group), [text_features], local, score,
                  (lambda block: zeros(block[0])) if want_grad else None, lambda arrived: home_acc.add_(arrived))
        loss, g_sum = totals["loss"], totals["g"]
        if want_grad:
            ctx.grads = finish_gradients(image_features, text_features, logit_scale, logit_bias,
                                         image_acc, home_acc, g_sum, norm, ctx.needs_input_grad[:4])
        return (loss / norm).to(image_features.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        return (*scale_saved_gradients(ctx, grad_output), None, None, None, None, None)
