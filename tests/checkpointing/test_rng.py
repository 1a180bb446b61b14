"""RNG states survive a checkpoint round trip that loads with weights_only=True."""
from __future__ import annotations

import io
import random

import numpy as np
import torch

from siglip_lightning.checkpointing.rng import collect_rng_states, reseed_from, restore_rng_states


def _draw():
    return (torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)],
            float(np.random.randn()), random.gauss(0, 1))


def test_rng_states_round_trip_through_weights_only_load():
    torch.manual_seed(123), np.random.seed(7), random.seed(9)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)  # and in python's
    buffer = io.BytesIO()
    torch.save({"rng": collect_rng_states()}, buffer)
    expected = _draw()
    _draw()  # move every generator on
    buffer.seek(0)
    restore_rng_states(torch.load(buffer, weights_only=True)["rng"])
    assert _draw() == expected


def test_reseed_is_deterministic_and_differs_by_rank():
    states = collect_rng_states()
    reseed_from(states, 1)
    a = _draw()
    reseed_from(states, 1)
    assert _draw() == a
    reseed_from(states, 2)
    assert _draw() != a
