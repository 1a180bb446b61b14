"""Save and restore the random number generators with each checkpoint (Lightning does not).

The states are stored as tensors and plain numbers only, so checkpoints still load with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any, Dict, Optional

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def collect_rng_states() -> Dict[str, Any]:
    """The states of python's ``random``, numpy's global generator, torch CPU and CUDA."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states`."""
    py = states["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    npy = states["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def reseed_from(states: Dict[str, Any], rank: int) -> None:
    """Seed every generator from a digest of ``states`` and ``rank`` (deterministic, distinct per rank)."""
    digest = hashlib.sha256(states["torch"].numpy().tobytes() + str(rank).encode()).digest()
    seed = int.from_bytes(digest[:4], "little")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class RNGStateCallback(Callback):
    """Puts the RNG states into every checkpoint and restores them when a run resumes.

    A resumed run should draw the same random numbers as an uninterrupted one. Lightning creates
    a new data loader iterator when it resumes, and that draws a number (the workers' base seed).
    The uninterrupted run drew it too if the checkpoint was taken at the end of an epoch, but not
    if it was taken mid-epoch. So the states are restored as soon as the checkpoint is loaded
    (right for a resume at an epoch boundary) and once more before the first batch if that batch
    is not the first of its epoch (right for a mid-epoch resume).

    Only global rank 0's states are saved (saving all would need a collective inside
    checkpointing, which can hang when one rank fails): on other DDP ranks the generators are
    re-seeded deterministically from rank 0's states and the rank.
    """

    def __init__(self) -> None:
        self._saved: Optional[Dict[str, Any]] = None
        self._rank = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._rank = trainer.global_rank

    def state_dict(self) -> Dict[str, Any]:
        return collect_rng_states()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._saved = state_dict
        self._restore()

    def _restore(self) -> None:
        if self._rank == 0:
            restore_rng_states(self._saved)
        else:
            reseed_from(self._saved, self._rank)

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        if self._saved is None:
            return
        if batch_idx > 0:  # resumed mid-epoch: undo the draws of the new iterator
            self._restore()
        self._saved = None
