"""Each loss family's planned cost against its own code: live bytes and FLOPs of a real forward + backward."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from siglip_lightning.losses import SigmoidLoss, SoftmaxLoss
from siglip_lightning.plan.flops import flop_counter
from siglip_lightning.plan.loss_cost import loss_cost, ring_sigmoid, traced_loss
from siglip_lightning.plan.tracker import LiveBytes


def _measured(loss, rows: int, width: int, dtype: torch.dtype):
    """Peak live bytes and FLOPs of ``loss`` on real features (not leaves: as out of the towers)."""
    image = F.normalize(torch.randn(rows, width), dim=-1).to(dtype).requires_grad_().clone()
    text = F.normalize(torch.randn(rows, width), dim=-1).to(dtype).requires_grad_().clone()
    scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    tracker = LiveBytes()
    with flop_counter() as counter, tracker:
        value = loss(image, text, scale, bias)
        grads = torch.autograd.grad(value, [image, text])
        del value, grads
    return max(o + g for _, o, g in tracker.timeline), counter.get_total_flops()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tile", [64, 160])
def test_tiled_sigmoid_formula_matches_its_machinery(dtype, tile):
    rows, width = 384, 48
    planned = ring_sigmoid(rows, 1, width, dtype, tile, False)
    peak, flops = _measured(SigmoidLoss(tile=tile), rows, width, dtype)
    assert planned.flops == flops == 6 * rows * rows * width
    assert abs(planned.bytes - peak) <= 0.1 * peak, (planned.bytes, peak)


@pytest.mark.parametrize("loss", [SigmoidLoss(), SoftmaxLoss()], ids=["sigmoid", "softmax"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_traced_loss_on_fake_features_equals_the_real_run(loss, dtype):
    rows, width = 300, 40
    planned = traced_loss(loss, rows, width, dtype, None, True)
    peak, flops = _measured(loss, rows, width, dtype)
    assert (planned.bytes, planned.flops) == (peak, flops)
    assert flops == 6 * rows * rows * width  # one product forward, two backward


def test_one_device_uses_the_loss_itself_and_several_the_family_formula():
    assert loss_cost(SigmoidLoss(), 64, 1, 16, torch.float32, None, True).how == "traced"
    assert loss_cost(SigmoidLoss(local_negatives=True), 64, 8, 16, torch.float32, None, True).how == "traced"
    ring = loss_cost(SigmoidLoss(), 64, 8, 16, torch.float32, None, True)
    assert ring.how == "formula: sigmoid ring" and ring.flops == 6 * 64 * 512 * 16
    assert loss_cost(SoftmaxLoss(), 64, 8, 16, torch.float32, None, False).flops == 12 * 64 * 512 * 16
    assert loss_cost(SoftmaxLoss(ring=True), 64, 8, 16, torch.float32, None, False).flops == 8 * 64 * 512 * 16
