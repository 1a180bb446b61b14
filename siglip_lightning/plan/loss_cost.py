"""Memory and FLOPs of one device's share of the contrastive loss, forward and backward.

On one device (or with ``local_negatives``) the loss runs in this process: it is traced on fake
features of the step's shape and dtype, so any loss class is planned by its own code. On W > 1 devices
the machinery is a ring or a gather over torch.distributed, which one process cannot run: each family
states its cost as a formula in the quantities of its code (per device: b local pairs, N = W·b global
pairs, d embedding width, s bytes per feature element, a bytes per accumulator element, float32 for
16-bit features, T the tile side):

- sigmoid, ring (``ring_sigmoid.py``): two accumulators 2·b·d·a, two tile buffers 2·min(T,b)²·s (a
  whole b x b block without tiling), and per ring direction the visiting and the next text block
  (2·b·d·s; one when a direction makes a single hop) and the accumulators travelling with them
  (2·b·d·a); at the end, with 16-bit features, a float32 copy of the images (b·d·a, for t's gradient)
  and the gradients cast back (2·b·d·s). FLOPs 6·b·N·d: a
  product for the logits and two for the gradients, per block. The tiled loss on one device is the
  same machinery with no ring (it reads t and b as numbers, which fake tensors cannot give).
- softmax, gathered (``softmax.py``): the gathered image and text features 2·N·d·s, the two b x N
  logit products and their log-softmaxes, kept for backward, 4·b·N·l (l: bytes of the logits'
  dtype), the features' gradients 2·b·d·s. FLOPs 12·b·N·d: two products forward, four backward.
- softmax, ring (``ring_softmax.py``): a block of logits, its gradient and the two exponentials with
  their arguments 4·b²·a (plus a b x b copy in s when a != s), accumulators 2·b·d·a, per direction
  the visiting and next block with its log-sum-exps and the travelling accumulators. FLOPs 8·b·N·d: one product per block in the first
  pass, three in the second.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from siglip_lightning import _compat
from siglip_lightning.errors import UserInputError
from siglip_lightning.losses.blockwise import accumulator_dtype
from siglip_lightning.plan.flops import flop_counter
from siglip_lightning.plan.tracker import LiveBytes


@dataclass
class LossCost:
    bytes: int  # peak working memory of the loss, its gradients of the features included
    flops: int
    how: str  # "traced" or the formula's name


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def traced_loss(loss: nn.Module, rows: int, width: int, dtype: torch.dtype,
                autocast_dtype: Optional[torch.dtype], with_bias: bool) -> LossCost:
    """Run ``loss`` forward and backward on fake ``[rows, width]`` features in this process."""
    scale = torch.tensor(10.0, requires_grad=True)  # real scalars: some losses read them as numbers
    bias = torch.tensor(-10.0, requires_grad=True) if with_bias else None
    autocast = (torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    with _compat.fake_tensor_mode():
        # not leaves (as in a step, where they come out of the towers): torch's counter hooks module inputs,
        # and autograd.grad refuses leaves with hooks
        image = torch.randn(rows, width, dtype=dtype, requires_grad=True).clone()
        text = torch.randn(rows, width, dtype=dtype, requires_grad=True).clone()
        tracker = LiveBytes()
        with flop_counter() as counter, tracker:
            with autocast:
                value = loss(image, text, scale, bias)
            # the features' gradients go on into the towers in a step: not accumulated into leaves here
            grads = torch.autograd.grad(value, [image, text])
            del value, grads
    peak = max(other + grads for _, other, grads in tracker.timeline)
    return LossCost(peak, counter.get_total_flops(), "traced")


def _streams(world: int, bidirectional: bool):
    """Hops made by each ring direction (ring.py's make_streams); none on one device."""
    others = world - 1
    if others == 0:
        return []
    return [others] if not bidirectional or others < 2 else [(others + 1) // 2, others // 2]


def ring_sigmoid(rows: int, world: int, width: int, dtype: torch.dtype, tile: Optional[int],
                 bidirectional: bool) -> LossCost:
    b, d, s, a = rows, width, _size(dtype), _size(accumulator_dtype(dtype))
    side = min(tile or b, b)
    scoring = 2 * side * side * s + sum(min(hops, 2) * b * d * s + 2 * b * d * a
                                        for hops in _streams(world, bidirectional))
    finishing = b * d * a + 2 * b * d * s if a != s else 0  # float32 images for t's gradient, gradients cast back
    name = "formula: sigmoid ring" if world > 1 else "formula: sigmoid tiled"
    return LossCost(2 * b * d * a + max(scoring, finishing), 6 * b * (world * b) * d, name)


def gathered_softmax(rows: int, world: int, width: int, dtype: torch.dtype,
                     autocast_dtype: Optional[torch.dtype]) -> LossCost:
    b, n, d, s = rows, rows * world, width, _size(dtype)
    logits = _size(autocast_dtype or dtype)
    memory = 2 * n * d * s + 4 * b * n * logits + 2 * b * d * s
    return LossCost(memory, 12 * b * n * d, "formula: softmax gather")


def ring_softmax(rows: int, world: int, width: int, dtype: torch.dtype, bidirectional: bool) -> LossCost:
    b, d, s, a = rows, width, _size(dtype), _size(accumulator_dtype(dtype))
    memory = 4 * b * b * a + (b * b * s if a != s else 0) + 2 * b * d * a
    memory += sum(min(hops, 2) * (b * d * s + b * a) + 2 * b * d * a for hops in _streams(world, bidirectional))
    return LossCost(memory, 8 * b * (world * b) * d, "formula: softmax ring")


def loss_cost(loss: nn.Module, rows: int, world: int, width: int, dtype: torch.dtype,
              autocast_dtype: Optional[torch.dtype], with_bias: bool) -> LossCost:
    """The loss's cost on one of ``world`` devices holding ``rows`` pairs of ``width``-wide features."""
    from siglip_lightning.losses import SigmoidLoss, SoftmaxLoss

    local = world == 1 or getattr(loss, "local_negatives", False)
    if local and isinstance(loss, SigmoidLoss) and loss.tile is not None:  # reads t and b as numbers: no fakes
        return ring_sigmoid(rows, 1, width, dtype, loss.tile, False)
    if local:
        return traced_loss(loss, rows, width, dtype, autocast_dtype, with_bias)
    # on several devices the losses exchange the features as they are (no autocast inside the ring)
    if isinstance(loss, SigmoidLoss):
        return ring_sigmoid(rows, world, width, dtype, loss.tile, loss.bidirectional)
    if isinstance(loss, SoftmaxLoss):
        if loss.ring:
            return ring_softmax(rows, world, width, dtype, loss.bidirectional)
        return gathered_softmax(rows, world, width, dtype, autocast_dtype)
    raise UserInputError(f"the planner has no formula for {type(loss).__name__} on {world} devices (it knows "
                         "SigmoidLoss and SoftmaxLoss); plan it on one device or with local_negatives")
