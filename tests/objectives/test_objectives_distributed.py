"""On 2 gloo processes with uneven batches: each rank's share of an objective averages (over ranks, as DDP
averages gradients) to the global per-example mean and its gradient; the teacher's centre is global."""
from __future__ import annotations

import torch
import torch.distributed as dist

from siglip_lightning.objectives.base import global_mean_share
from siglip_lightning.objectives.context import StepContext
from tests.helpers.distributed_group import run_in_group
from tests.objectives.helpers import random_batch, tiny_module

ROWS = [3, 5]  # uneven: a plain mean of the ranks' local means would weigh them wrongly


def _check(rank: int, world: int) -> None:
    torch.manual_seed(0)
    module = tiny_module(seed=0).double()  # the same weights on both ranks
    locca = module.objectives[0]
    batches = [random_batch(n, seed=10 + r) for r, n in enumerate(ROWS)]
    for b in batches:
        b["image"] = b["image"].double()
    # this rank's share, backpropagated, then DDP's average of gradients
    share = global_mean_share(locca.per_example(StepContext(module.image_tower, batches[rank], step=4, rank=rank)))
    # the decoder and the image tower below its MAP head (LocCa reads the un-pooled tokens)
    params = list(locca.parameters()) + [p for n, p in module.image_tower.named_parameters() if not n.startswith("head.")]
    grads = torch.autograd.grad(share, params)
    grads = [g.clone() for g in grads]
    for g in grads:
        dist.all_reduce(g)
        g /= world
    shares = share.detach().clone()
    dist.all_reduce(shares)
    # the reference, computed here from both ranks' batches: the mean over all 8 examples
    per_example = torch.cat([locca.per_example(StepContext(module.image_tower, b, step=4, rank=r))
                             for r, b in enumerate(batches)])
    reference = per_example.mean()
    expected = torch.autograd.grad(reference, params)
    assert torch.allclose(shares / world, reference.detach(), rtol=1e-12), (float(shares / world), float(reference))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)
    # the SILC centre moves by the mean teacher output over both ranks' rows
    silc = module.objectives[1]
    before = silc.center.clone()
    from siglip_lightning.objectives.heads import update_center

    outputs = [torch.randn(n, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(r))
               for r, n in enumerate(ROWS)]
    update_center(silc.center, outputs[rank], 0.9)
    torch.testing.assert_close(silc.center, 0.9 * before + 0.1 * torch.cat(outputs).mean(0))


def test_objective_shares_give_the_global_mean_and_its_gradient():
    run_in_group(2, _check)
