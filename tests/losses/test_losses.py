"""SoftmaxLoss and SigmoidLoss against the plain formulas (float64) and against open_clip."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from siglip_lightning.losses import SigmoidLoss, SoftmaxLoss


def random_features(n: int, d: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    zimg = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    ztxt = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    return zimg, ztxt


def sigmoid_formula(x, y, t, b):
    """-(1/|B|) sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b)), written elementwise."""
    n = x.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total = total + torch.log(torch.sigmoid(z * (t * (x[i] @ y[j]) + b)))
    return -total / n


def softmax_formula(x, y, t):
    """-(1/2|B|) sum_i [log softmax_j(t x_i.y_j)_i + log softmax_j(t x_j.y_i)_i]."""
    n = x.shape[0]
    total = 0.0
    for i in range(n):
        row = torch.stack([t * (x[i] @ y[j]) for j in range(n)])
        col = torch.stack([t * (x[j] @ y[i]) for j in range(n)])
        total = total + torch.log_softmax(row, 0)[i] + torch.log_softmax(col, 0)[i]
    return -total / (2 * n)


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("n", [1, 2, 7])
def test_sigmoid_matches_formula(n):
    x, y = random_features(n, 5, seed=n)
    t = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-10.0 + n, dtype=torch.float64, requires_grad=True)
    ours = SigmoidLoss()(x, y, t, b)
    ref = sigmoid_formula(x, y, t, b)
    torch.testing.assert_close(ours, ref)
    for g_ours, g_ref in zip(grads(ours, x, y, t, b), grads(ref, x, y, t, b)):
        torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_softmax_matches_formula(n):
    x, y = random_features(n, 6, seed=100 + n)
    t = torch.tensor(1 / 0.07, dtype=torch.float64, requires_grad=True)
    ours = SoftmaxLoss()(x, y, t)
    ref = softmax_formula(x, y, t)
    torch.testing.assert_close(ours, ref)
    for g_ours, g_ref in zip(grads(ours, x, y, t), grads(ref, x, y, t)):
        torch.testing.assert_close(g_ours, g_ref)


def test_sigmoid_matches_open_clip():
    x, y = random_features(33, 16, seed=1, dtype=torch.float32)
    t, b = torch.tensor(7.5, requires_grad=True), torch.tensor(-4.0, requires_grad=True)
    ours = SigmoidLoss()(x, y, t, b)
    peer = SigLipLoss()(x, y, t, b)
    torch.testing.assert_close(ours, peer)
    for g1, g2 in zip(grads(ours, x, y, t, b), grads(peer, x, y, t, b)):
        torch.testing.assert_close(g1, g2)


def test_softmax_matches_open_clip():
    x, y = random_features(33, 16, seed=2, dtype=torch.float32)
    t = torch.tensor(14.0, requires_grad=True)
    ours = SoftmaxLoss()(x, y, t)
    peer = ClipLoss()(x, y, t)
    torch.testing.assert_close(ours, peer)
    for g1, g2 in zip(grads(ours, x, y, t), grads(peer, x, y, t)):
        torch.testing.assert_close(g1, g2)


def test_paper_init_and_initial_loss():
    """Paper: t' = log 10, b = -10; at init every logit is about -10, so the loss is about
    (|B| - 1) * softplus(-10) + softplus(10) ~ 10 + |B| * 4.5e-5 for random embeddings."""
    assert SigmoidLoss.init_logit_scale == pytest.approx(math.log(10))
    assert SigmoidLoss.init_logit_bias == -10
    assert SoftmaxLoss.init_logit_scale == pytest.approx(math.log(1 / 0.07))
    assert SoftmaxLoss.init_logit_bias is None
    x, y = random_features(256, 64, seed=3, dtype=torch.float32)
    value = SigmoidLoss()(x, y, torch.tensor(10.0), torch.tensor(-10.0)).item()
    assert 9.5 < value < 10.6


@pytest.mark.parametrize("loss_cls", [SigmoidLoss, SoftmaxLoss])
def test_mismatched_rows_refused(loss_cls):
    x, _ = random_features(4, 8, seed=4)
    _, y = random_features(5, 8, seed=5)
    with pytest.raises(ValueError, match="same number of rows"):
        loss_cls()(x, y, torch.tensor(1.0), torch.tensor(0.0))
