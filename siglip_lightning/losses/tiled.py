"""Sigmoid loss of one process's batch without ever holding the ``n x n`` logits.

A custom autograd Function walks ``tile x tile`` blocks of the logits; for each it adds the loss
and, when gradients are wanted, the tile's share of the feature gradients (see ``blockwise.py``).
Backward only scales the stored gradients by the incoming one. Peak working memory is
O(n·d + tile²) (the gradients themselves plus two tile buffers) instead of a few ``n x n``
buffers, at the same number of flops as the dense loss's forward and backward.
"""
from __future__ import annotations

import torch

from siglip_lightning.losses.blockwise import accumulator_dtype, sigmoid_block_accumulate


def finish_gradients(image_features, text_features, logit_scale, logit_bias, image_acc, text_acc, g_sum, norm, needs):
    """Turn raw accumulators into gradients of ``loss_sum / norm`` for x, y, t and b, each in its
    input's dtype and shape (``None`` where that input needs no gradient). The accumulators are
    scaled in place and become the gradients (no second copy of ``n x d``)."""
    t = logit_scale.detach().to(image_acc.dtype)
    grad_x = grad_y = grad_t = grad_b = None
    if needs[2]:  # before image_acc is scaled
        # a dot product of the flattened tensors: no n x d temporary as (x * acc).sum() would make
        x = image_features.detach().to(image_acc.dtype).reshape(-1)
        grad_t = (torch.dot(x, image_acc.reshape(-1)) / norm).to(logit_scale.dtype)
        grad_t = grad_t.reshape(logit_scale.shape)
    if needs[3]:
        grad_b = (g_sum / norm).to(logit_bias.dtype).reshape(logit_bias.shape)
    if needs[0]:
        grad_x = image_acc.mul_(t / norm).to(image_features.dtype)
    if needs[1]:
        grad_y = text_acc.mul_(t / norm).to(text_features.dtype)
    return grad_x, grad_y, grad_t, grad_b


def scale_saved_gradients(ctx, grad_output):
    """Backward of the losses that compute their gradients in forward: scale them in place."""
    if getattr(ctx, "grads", None) is None:
        raise RuntimeError("this loss computes its gradients during forward and can be backpropagated once; "
                           "recompute the loss instead of retain_graph=True")
    grads = [None if g is None else g.mul_(grad_output.to(g.dtype)) for g in ctx.grads]
    ctx.grads = None
    return grads


class TiledSigmoidFunction(torch.autograd.Function):
    """forward(x, y, t, b, tile) -> loss sum / n; gradients computed during the forward pass."""

    @staticmethod
    def forward(ctx, image_features, text_features, logit_scale, logit_bias, tile):
        n = image_features.shape[0]
        needs = ctx.needs_input_grad[:4]
        want_grad = any(needs)
        acc = accumulator_dtype(image_features.dtype)
        loss_dtype = acc
        image_acc = torch.zeros(image_features.shape, dtype=acc, device=image_features.device) if want_grad else None
        text_acc = torch.zeros(text_features.shape, dtype=acc, device=text_features.device) if needs[1] else None
        loss_sum, g_sum = sigmoid_block_accumulate(
            image_features, text_features, logit_scale, logit_bias, 0, tile, image_acc, text_acc, loss_dtype
        )
        if want_grad:
            grads = finish_gradients(image_features, text_features, logit_scale, logit_bias,
                                     image_acc, text_acc, g_sum, n, needs)
            del image_acc, text_acc
            ctx.grads = grads
        return (loss_sum / n).to(image_features.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        return (*scale_saved_gradients(ctx, grad_output), None)
