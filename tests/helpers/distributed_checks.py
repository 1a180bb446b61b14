"""Worker functions run on every rank of a real gloo group by tests/losses/test_distributed.py.

Each rank builds the same global batch from a seed, keeps its own rows, runs the loss under test
and compares, in float64, with the global formula written out here (independent of the package):
the mean over ranks of the returned values against the global loss; each rank's feature gradient
against W x the global gradient of its rows (what DDP's averaging divides by W); and the rank
average of the t and b gradients against the global ones.
"""
from __future__ import annotations

from typing import List

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F


def global_batch(sizes: List[int], d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    t = torch.tensor(float(torch.empty(()).uniform_(1, 20, generator=g)), dtype=torch.float64)
    b = torch.tensor(float(torch.empty(()).uniform_(-10, 2, generator=g)), dtype=torch.float64)
    return x, y, t, b


def sigmoid_reference(x, y, t, b):
    """-(1/N) sum_ij log sigmoid(z_ij (t x_i.y_j + b)), z = 2 I - 1, on the whole batch."""
    logits = t * x @ y.T + (0 if b is None else b)
    z = 2 * torch.eye(x.shape[0], dtype=x.dtype) - 1
    return -F.logsigmoid(z * logits).sum() / x.shape[0]


def softmax_reference(x, y, t, b=None):
    logits = t * x @ y.T
    labels = torch.arange(x.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def leaf(t):
    return None if t is None else t.clone().requires_grad_()


def rows_of(rank: int, sizes: List[int]) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def all_mean(value: torch.Tensor, world: int) -> torch.Tensor:
    value = value.detach().clone().reshape(1)
    dist.all_reduce(value)
    return value[0] / world


def check_one(rank, world, loss, reference, sizes, d, seed, with_bias=True, scale=1.0):
    """Run ``loss`` on this rank's rows, compare value and gradients with ``reference``."""
    x, y, t, b = global_batch(sizes, d, seed)
    b = b if with_bias else None
    gx, gy, gt, gb = leaf(x), leaf(y), leaf(t), leaf(b)
    ref = reference(gx, gy, gt, gb)
    ref_grads = torch.autograd.grad(ref, [v for v in (gx, gy, gt, gb) if v is not None])
    mine = rows_of(rank, sizes)
    lx, ly, lt, lb = leaf(x[mine]), leaf(y[mine]), leaf(t), leaf(b)
    value = loss(lx, ly, lt, lb)
    (scale * value).backward()
    torch.testing.assert_close(all_mean(value, world), ref.detach())
    torch.testing.assert_close(lx.grad, scale * world * ref_grads[0][mine])
    torch.testing.assert_close(ly.grad, scale * world * ref_grads[1][mine])
    torch.testing.assert_close(all_mean(lt.grad, world), scale * ref_grads[2])
    if with_bias:
        torch.testing.assert_close(all_mean(lb.grad, world), scale * ref_grads[3])
    with torch.no_grad():  # the evaluation path (no accumulators) gives the same value
        torch.testing.assert_close(loss(x[mine], y[mine], t, b), value.detach())
    return value, lx.grad, ly.grad, lt.grad


def chunked_matches_formula(rank: int, world: int) -> None:
    from siglip_lightning.losses import ChunkedSigmoidLoss

    cases = [  # (per-rank sizes, d, bidirectional, tile, with_bias)
        ([1] * world, 3, True, None, True),
        ([5] * world, 8, True, None, True),
        ([5] * world, 8, False, None, True),
        ([6] * world, 4, True, 4, True),
        ([4] * world, 6, True, None, False),
        ([3, 1, 4, 2][:world], 5, True, None, True),  # a short batch on some ranks
        ([2, 5, 1, 3][:world], 5, False, 2, True),
    ]
    for i, (sizes, d, bidir, tile, with_bias) in enumerate(cases):
        check_one(rank, world, ChunkedSigmoidLoss(bidirectional=bidir, tile=tile), sigmoid_reference,
                  sizes, d, seed=100 * world + i, with_bias=with_bias)
    # A loss multiplied by the same factor on every rank (gradient accumulation, AMP scaling).
    check_one(rank, world, ChunkedSigmoidLoss(), sigmoid_reference, [3] * world, 4, seed=7, scale=2.5)


def chunked_matches_peers(rank: int, world: int) -> None:
    """Same inputs through open_clip's SigLipLoss(bidir) on every rank, and transformers' loss."""
    from open_clip.loss import SigLipLoss

    from siglip_lightning.losses import ChunkedSigmoidLoss

    sizes, d = [6] * world, 16
    for bidir in (True, False):
        ours = check_one(rank, world, ChunkedSigmoidLoss(bidirectional=bidir), sigmoid_reference, sizes, d, seed=3)
        x, y, t, b = global_batch(sizes, d, 3)
        mine = rows_of(rank, sizes)
        px, py, pt, pb = leaf(x[mine]), leaf(y[mine]), leaf(t), leaf(b)
        peer = SigLipLoss(rank=rank, world_size=world, dist_impl="bidir")(px, py, pt, pb)
        peer.backward()
        torch.testing.assert_close(ours[0].detach(), peer.detach())
        for a, p in zip(ours[1:], (px.grad, py.grad, pt.grad)):
            torch.testing.assert_close(a, p)
    if rank == 0:
        x, y, t, b = global_batch(sizes, d, 3)
        torch.testing.assert_close(transformers_siglip_loss(x, y, t, b), sigmoid_reference(x, y, t, b))


class Fixed(torch.nn.Module):
    """A stand-in tower whose output's ``pooler_output`` is a given embedding matrix."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.embeddings = embeddings

    def forward(self, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(pooler_output=self.embeddings)


def transformers_siglip_loss(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Run transformers' SiglipModel.forward with towers that return the given embeddings, so the
    loss is the library's own code on our inputs (it takes t' = log t)."""
    from transformers import SiglipConfig, SiglipModel

    config = SiglipConfig(text_config=dict(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                           num_attention_heads=1, vocab_size=10,
                                           bos_token_id=1, eos_token_id=2, pad_token_id=0),
                          vision_config=dict(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                             num_attention_heads=1, image_size=4, patch_size=2))
    model = SiglipModel(config).double()
    model.vision_model = Fixed(x)
    model.text_model = Fixed(y)
    with torch.no_grad():
        model.logit_scale.fill_(float(t.log()))
        model.logit_bias.fill_(float(b))
        out = model(input_ids=torch.zeros(x.shape[0], 2, dtype=torch.long),
                    pixel_values=torch.zeros(x.shape[0], 3, 4, 4, dtype=torch.float64), return_loss=True)
    return out.loss


def softmax_matches_formula(rank: int, world: int) -> None:
    from open_clip.loss import ClipLoss

    from siglip_lightning.losses import ChunkedSoftmaxLoss, DistributedSoftmaxLoss

    for i, sizes in enumerate([[1] * world, [4] * world, [3, 1, 4, 2][:world]]):
        for loss in (DistributedSoftmaxLoss(), ChunkedSoftmaxLoss(), ChunkedSoftmaxLoss(bidirectional=False)):
            check_one(rank, world, loss, softmax_reference, sizes, 6, seed=500 + i, with_bias=False)
    if world > 1:  # open_clip's local-loss CLIP with gathered gradients gives the same per-rank value
        sizes = [5] * world
        x, y, t, _ = global_batch(sizes, 6, 9)
        mine = rows_of(rank, sizes)
        px, py, pt = leaf(x[mine]), leaf(y[mine]), leaf(t)
        peer = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)(px, py, pt)
        peer.backward()
        for loss in (DistributedSoftmaxLoss(), ChunkedSoftmaxLoss()):
            ours = check_one(rank, world, loss, softmax_reference, sizes, 6, seed=9, with_bias=False)
            torch.testing.assert_close(ours[0].detach(), peer.detach())
            torch.testing.assert_close(ours[1], px.grad)
            torch.testing.assert_close(ours[2], py.grad)
            # The chunked ring attributes the t-gradient of the text-side terms to the image rows'
            # rank; the average over ranks (what DDP applies) is the same.
            torch.testing.assert_close(all_mean(ours[3], world), all_mean(pt.grad, world))
            if isinstance(loss, DistributedSoftmaxLoss):
                torch.testing.assert_close(ours[3], pt.grad)


def bad_inputs_raise_everywhere(rank: int, world: int) -> None:
    """A bad input on one rank makes every rank raise (no rank left blocked in an exchange)."""
    from siglip_lightning.losses import ChunkedSigmoidLoss, ChunkedSoftmaxLoss, DistributedSoftmaxLoss

    t, b = torch.tensor(10.0), torch.tensor(-10.0)
    for loss in (ChunkedSigmoidLoss(), DistributedSoftmaxLoss(), ChunkedSoftmaxLoss()):
        x, y = torch.randn(4, 8), torch.randn(5 if rank == world - 1 else 4, 8)
        with pytest.raises(ValueError, match=f"same number of rows.*rank {world - 1}"):
            loss(x, y, t, b)
        d = 8 if rank else 6
        with pytest.raises(ValueError, match="same width"):
            loss(torch.randn(3, d), torch.randn(3, d), t, b)
        n = 0 if rank == 0 else 3
        with pytest.raises(ValueError, match="empty batch"):
            loss(torch.randn(n, 8), torch.randn(n, 8), t, b)
    # The group still works after the errors.
    check_one(rank, world, ChunkedSigmoidLoss(), sigmoid_reference, [2] * world, 4, seed=11)
