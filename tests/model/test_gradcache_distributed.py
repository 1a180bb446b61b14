"""Gradient caching on 2 real gloo processes: under DDP (as Lightning runs it: the step inside the DDP
forward, one backward after it) and under FSDP2, with the distributed losses, every parameter's
gradient equals the global loss's gradient on the whole global batch, and DDP all-reduces once per step."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tests.helpers.distributed_group import run_in_group
from siglip_lightning import SigLIPModule, TextTower, VisionTower
from siglip_lightning.model.gradcache import cached_gradient_loss
from siglip_lightning.losses import (ChunkedSigmoidLoss, ChunkedSoftmaxLoss, DistributedSoftmaxLoss, SigmoidLoss,
                                     SoftmaxLoss)

ROWS = [7, 5]  # per rank: uneven, and neither a multiple of the micro-batch size
MICRO = 3
# (the loss each rank runs, the loss of the whole global batch in one piece: local_negatives, since the
# reference runs inside the process group and must not exchange anything)
GLOBAL_LOSSES = {"chunked_sigmoid": (ChunkedSigmoidLoss, lambda: SigmoidLoss(local_negatives=True)),
                 "softmax": (DistributedSoftmaxLoss, lambda: SoftmaxLoss(local_negatives=True)),
                 "chunked_softmax": (ChunkedSoftmaxLoss, lambda: SoftmaxLoss(local_negatives=True))}


def _setup(rank: int, loss_name: str, seed: int, rows=ROWS):
    distributed_loss, global_loss = GLOBAL_LOSSES[loss_name]
    torch.manual_seed(seed)
    towers = (VisionTower(image_size=16, patch_size=8, width=32, layers=1, heads=2),
              TextTower(vocab_size=64, context_length=8, width=32, layers=1, heads=2, output_dim=32))
    module = SigLIPModule(*towers, loss=distributed_loss()).double()
    reference = copy.deepcopy(module)
    reference.loss = global_loss()
    images = torch.randn(sum(rows), 3, 16, 16, dtype=torch.float64)
    text = torch.randint(0, 64, (sum(rows), 8))
    reference.compute_loss({"image": images, "text": text}).backward()  # the whole global batch at once
    expected = {name: p.grad for name, p in reference.named_parameters()}
    start = sum(rows[:rank])
    mine = slice(start, start + rows[rank])
    return module, expected, images[mine], text[mine]


def _check(expected, named_grads):
    for name, grad in named_grads:
        torch.testing.assert_close(grad, expected[name], rtol=1e-8, atol=1e-11,
                                   msg=lambda m, name=name: f"{name}: {m}")


class LightningLikeStep(nn.Module):
    """What Lightning wraps in DDP: its forward runs training_step, whose output is backpropagated after."""

    def __init__(self, module: SigLIPModule) -> None:
        super().__init__()
        self.module, self.micro = module, None

    def forward(self, images, text):
        if self.micro:
            return cached_gradient_loss(self.module, images, text, self.micro)[1]
        return self.module.compute_loss({"image": images, "text": text})


def ddp_matches_global_gradient(rank: int, world: int, loss_name: str, seed: int) -> None:
    module, expected, images, text = _setup(rank, loss_name, seed)
    step = LightningLikeStep(module)
    ddp = DistributedDataParallel(step, find_unused_parameters=False, gradient_as_bucket_view=True)
    calls = []

    def counting_allreduce(state, bucket):
        calls.append(1)
        buffer = bucket.buffer().div_(world)
        return dist.all_reduce(buffer, async_op=True).get_future().then(lambda fut: fut.value()[0])

    ddp.register_comm_hook(None, counting_allreduce)
    counts = {}
    for micro in (MICRO, MICRO, None, MICRO):  # twice in a row, then a plain step, then cached again
        step.micro = micro
        module.zero_grad(set_to_none=True)
        calls.clear()
        ddp(images, text).backward()
        _check(expected, ((n, p.grad) for n, p in module.named_parameters()))
        counts.setdefault(micro, set()).add(len(calls))
    # every step all-reduces each bucket exactly once: as many calls as the plain step makes
    assert counts[MICRO] == counts[None] and len(counts[None]) == 1, counts


def fsdp2_matches_global_gradient(rank: int, world: int, loss_name: str, seed: int, rows) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from siglip_lightning.model.sharding import shard_towers

    module, expected, images, text = _setup(rank, loss_name, seed, rows)
    shard_towers(module, init_device_mesh("cpu", (world,)))
    for _ in range(2):
        module.zero_grad(set_to_none=True)
        _, surrogate = cached_gradient_loss(module, images, text, MICRO)
        surrogate.backward()
        full = lambda g: g.full_tensor() if hasattr(g, "full_tensor") else g  # noqa: E731
        _check(expected, ((n, full(p.grad)) for n, p in module.named_parameters()))


@pytest.mark.parametrize("loss_name", list(GLOBAL_LOSSES))
def test_ddp_gradient_caching_gives_the_global_gradient_with_one_all_reduce(loss_name):
    run_in_group(2, ddp_matches_global_gradient, loss_name, int(torch.randint(0, 2**31 - 1, ())))


# [7, 2]: rank 1 has fewer rows than rank 0 has micro-batches, so it pads with zero-gradient forwards
@pytest.mark.parametrize("rows", [ROWS, [7, 2]])
def test_fsdp2_gradient_caching_gives_the_global_gradient(rows):
    run_in_group(2, fsdp2_matches_global_gradient, "chunked_sigmoid", int(torch.randint(0, 2**31 - 1, ())), rows)


@pytest.mark.slow  # two CLI processes each: ~1 min on a loaded 2-core machine
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_cli_fit_with_micro_batches(strategy, tmp_path):
    """The whole Lightning path (2 ranks, gloo): trains with the chunked loss, logs, writes a checkpoint."""
    from tests.conftest import REPO, run_cli, tiny_fit_args

    args = tiny_fit_args(tmp_path, "--config", str(REPO / "configs" / "strategies" / f"{strategy}.yaml"),
                         "--trainer.devices=2", "--model.micro_batch_size=5", "--model.loss=ChunkedSigmoidLoss",
                         "--trainer.gradient_clip_val=1.0", "--trainer.limit_val_batches=0",
                         "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp_path}")
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "train/loss" in metrics
    saved = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=True)
    assert saved["global_step"] == 2 and saved["hyper_parameters"]["micro_batch_size"] == 5
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
