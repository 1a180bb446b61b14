"""The CLIP softmax loss over all ranks with the ring of ``ring_sigmoid.py``: O(b² + b·d) per rank.

A softmax needs each row's log-sum-exp over all N columns before any gradient, so the ring runs
twice (as Inf-CL does with running log-sum-exps):

1. Text blocks travel round the ring; each rank folds every ``b x b`` block of logits into the
   running log-sum-exp of its image rows, and into a log-sum-exp accumulator (one number per text)
   that travels with the block and comes home with the texts' log-sum-exp over all images.
2. Only when gradients are wanted: text blocks travel again with their log-sum-exps; each rank
   forms d(loss)/d(logits) of the block, G = (softmax over the row + softmax over the column) / 2
   minus the positives, and adds ``G @ y`` to its images and ``G.T @ x`` to a gradient accumulator
   travelling with the block, as in the chunked sigmoid loss.

Same per-rank value and feature gradients as the gathered ``SoftmaxLoss`` (see there for the
convention). The gradient of t is split differently between ranks (a rank gets the t-gradient of
every pair whose image it holds), but its average over ranks, which DDP applies, is the same.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from siglip_lightning.losses.blockwise import accumulator_dtype
from siglip_lightning.losses.ring import walk_ring
from siglip_lightning.losses.ring_sigmoid import make_streams
from siglip_lightning.losses.tiled import finish_gradients, scale_saved_gradients


class ChunkedSoftmaxFunction(torch.autograd.Function):
    """forward(x, y, t, group, sizes, bidirectional, want_grad) -> this rank's L_r."""

    @staticmethod
    def forward(ctx, image_features, text_features, logit_scale, group, sizes, bidirectional, want_grad):
        rank = dist.get_rank(group)
        norm = sum(sizes) / len(sizes)
        acc = accumulator_dtype(image_features.dtype)
        x = image_features

        def logits(texts):
            return (x @ texts.T).to(acc).mul_(logit_scale)

        state = {}

        def local_lse():
            block = logits(text_features)
            state["img"] = torch.logsumexp(block, 1)
            state["txt"] = torch.logsumexp(block, 0)
            state["pos"] = torch.diagonal(block).sum()

        def fold(block, lse_acc):
            s = logits(block[0])
            state["img"] = torch.logaddexp(state["img"], torch.logsumexp(s, 1))
            torch.logaddexp(lse_acc, torch.logsumexp(s, 0), out=lse_acc)

        def new_lse(block):
            return torch.full((block[0].shape[0],), -math.inf, dtype=acc, device=x.device)

        def home_lse(arrived):
            state["txt"] = torch.logaddexp(state["txt"], arrived)

        walk_ring(make_streams(rank, sizes, bidirectional, group, first_index=0), [text_features], local_lse, fold,
                  new_lse, home_lse)
        loss = (state["img"].sum() + state["txt"].sum() - 2 * state["pos"]) / 2

        if want_grad:
            image_acc = torch.zeros(x.shape, dtype=acc, device=x.device)
            text_acc = torch.zeros(text_features.shape, dtype=acc, device=x.device)
            lse_img = state["img"][:, None]

            def dlogits(texts, lse_txt, positives):
                s = logits(texts)
                g = torch.exp(s - lse_img).add_(torch.exp(s - lse_txt[None, :])).mul_(0.5)
                if positives:
                    torch.diagonal(g).sub_(1)
                return g.to(x.dtype)

            def local_grad():
                g = dlogits(text_features, state["txt"], True)
                image_acc.add_(g @ text_features)
                text_acc.add_(g.T @ x)

            def score(block, share):
                g = dlogits(block[0], block[1], False)
                image_acc.add_(g @ block[0])
                share.add_(g.T @ x)

            walk_ring(make_streams(rank, sizes, bidirectional, group, first_index=2), [text_features, state["txt"]],
                      local_grad, score, lambda block: torch.zeros(block[0].shape, dtype=acc, device=x.device),
                      text_acc.add_)
            ctx.grads = finish_gradients(x, text_features, logit_scale, None, image_acc, text_acc, None, norm,
                                         (*ctx.needs_input_grad[:3], False))[:3]
        return (loss / norm).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        return (*scale_saved_gradients(ctx, grad_output), None, None, None, None)
