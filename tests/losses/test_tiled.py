"""TiledSigmoidLoss against the dense SigmoidLoss and the plain formula: values and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from siglip_lightning.losses import SigmoidLoss, TiledSigmoidLoss


def features(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    y = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    t = (torch.rand((), generator=g, dtype=dtype) * 20 + 1).requires_grad_()
    b = (torch.rand((), generator=g, dtype=dtype) * 12 - 10).requires_grad_()
    return x, y, t, b


def formula(x, y, t, b):
    logits = t * x @ y.T + b
    z = 2 * torch.eye(x.shape[0], dtype=x.dtype) - 1
    return -F.logsigmoid(z * logits).sum() / x.shape[0]


@pytest.mark.parametrize("n,tile", [(1, 1), (1, 64), (7, 3), (16, 4), (37, 8), (50, 64), (129, 32)])
def test_tiled_matches_formula(n, tile):
    x, y, t, b = features(n, 12, seed=n * 1000 + tile)
    ours = TiledSigmoidLoss(tile=tile)(x, y, t, b)
    ref = formula(x, y, t, b)
    torch.testing.assert_close(ours, ref)
    for g_ours, g_ref in zip(torch.autograd.grad(3 * ours, (x, y, t, b)), torch.autograd.grad(3 * ref, (x, y, t, b))):
        torch.testing.assert_close(g_ours, g_ref)


def test_tiled_matches_dense_float32_and_partial_grads():
    x, y, t, b = features(300, 64, seed=5, dtype=torch.float32)
    dense = SigmoidLoss()(x, y, t, b)
    tiled = TiledSigmoidLoss(tile=128)(x, y, t, b)
    torch.testing.assert_close(tiled, dense)
    for g1, g2 in zip(torch.autograd.grad(tiled, (x, y, t, b)), torch.autograd.grad(dense, (x, y, t, b))):
        torch.testing.assert_close(g1, g2)
    # Only some inputs need gradients (a locked image tower; a fixed t; no bias).
    x2, y2 = x.detach(), y.detach().requires_grad_()
    tiled = TiledSigmoidLoss(tile=100)(x2, y2, t.detach(), None)
    dense = SigmoidLoss()(x2, y2, t.detach(), None)
    torch.testing.assert_close(tiled, dense)
    torch.testing.assert_close(torch.autograd.grad(tiled, y2)[0], torch.autograd.grad(dense, y2)[0])
    with torch.no_grad():
        torch.testing.assert_close(TiledSigmoidLoss(tile=64)(x, y, t, b), SigmoidLoss()(x, y, t, b))


def test_tiled_bfloat16_close_to_float64():
    x, y, t, b = features(200, 32, seed=6)
    ref = formula(x, y, t, b)
    ours = TiledSigmoidLoss(tile=64)(x.detach().bfloat16().requires_grad_(), y.detach().bfloat16(), t.float(), b.float())
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.double(), ref.detach(), rtol=2e-2, atol=2e-2)


def test_tiled_refuses_bad_input():
    x, y, t, b = features(4, 8, seed=7)
    with pytest.raises(ValueError, match="same number of rows"):
        TiledSigmoidLoss()(x, y[:3], t, b)
    with pytest.raises(ValueError, match="tile"):
        TiledSigmoidLoss(tile=0)


def test_second_backward_is_refused_clearly():
    x, y, t, b = features(8, 4, seed=8)
    loss = TiledSigmoidLoss(tile=4)(x, y, t, b)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagated once"):
        loss.backward()
