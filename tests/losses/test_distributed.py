"""ChunkedSigmoidLoss, DistributedSoftmaxLoss and ChunkedSoftmaxLoss on real gloo process groups of 1 to 4 ranks,
against the global formula in float64, open_clip 3.3 and transformers' SiglipModel loss."""
from __future__ import annotations

import open_clip.loss  # noqa: F401  imported here so that the forked ranks inherit it
import pytest
import torch
import transformers.models.siglip.modeling_siglip  # noqa: F401

from tests.helpers import distributed_checks as checks
from tests.helpers.distributed_group import run_in_group
from siglip_lightning.losses import (ChunkedSigmoidLoss, ChunkedSoftmaxLoss, DistributedSoftmaxLoss, SigmoidLoss,
                                     SoftmaxLoss)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_chunked_sigmoid_matches_global_formula(world):
    run_in_group(world, checks.chunked_matches_formula)


@pytest.mark.parametrize("world", [2, 3])
def test_chunked_sigmoid_matches_open_clip_and_transformers(world):
    run_in_group(world, checks.chunked_matches_peers)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_distributed_softmax_matches_global_formula(world):
    run_in_group(world, checks.softmax_matches_formula)


@pytest.mark.parametrize("world", [2, 3])
def test_bad_input_on_one_rank_raises_on_all(world):
    run_in_group(world, checks.bad_inputs_raise_everywhere)


def test_without_process_group_falls_back_to_the_local_loss():
    x, y, t, b = checks.global_batch([7], 5, seed=1)
    torch.testing.assert_close(ChunkedSigmoidLoss()(x, y, t, b), SigmoidLoss()(x, y, t, b))
    torch.testing.assert_close(ChunkedSigmoidLoss(tile=3)(x, y, t, b), SigmoidLoss()(x, y, t, b))
    torch.testing.assert_close(DistributedSoftmaxLoss()(x, y, t), SoftmaxLoss()(x, y, t))
    torch.testing.assert_close(ChunkedSoftmaxLoss()(x, y, t), SoftmaxLoss()(x, y, t))
    with pytest.raises(ValueError, match="same number of rows"):
        ChunkedSigmoidLoss()(x, y[:3], t, b)
