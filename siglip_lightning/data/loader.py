"""The DataLoader of a stream: sets the epoch, resumes mid-epoch, and keeps ranks in step.

* Lightning does not call ``set_epoch`` on an iterable dataset: this loader does, at each pass.
* Ranks may hold different amounts of data (uneven shards, bad samples). Under DDP a rank that
  runs out while another still steps would hang the gradient all-reduce, so before handing out a
  batch every rank agrees, with one all-reduce(min) of a flag, that all ranks have one. The epoch
  ends for all at the shortest rank: the documented drop is the longer ranks' surplus batches
  (plus, as always with ``drop_last``, each worker's last partial batch).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from siglip_lightning.ranks import collective_device, world_size
from siglip_lightning.errors import UserInputError


def _all_ranks_have(flag: bool) -> bool:
    if world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], device=collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


class StreamLoader(DataLoader):
    """A DataLoader over a :class:`~siglip_lightning.data.stream.PairStream`.

    Args:
        epoch_fn: returns the current epoch (the trainer's).
        start_fn: called with the epoch at each new pass; returns ``(positions, worker_offset)`` or
            ``(positions, worker_offset, excluded keys)`` to resume from (empty: the start of the epoch).
        require_batches: raise when a pass (not resumed) yields no batch at all (so a dataset that
            is empty or all bad stops instead of spinning through empty epochs).
    """

    def __init__(self, *args, epoch_fn: Callable[[], int],
                 start_fn: Optional[Callable[[int], tuple]] = None, require_batches: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_fn = epoch_fn
        self.start_fn = start_fn
        self.require_batches = require_batches

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        epoch = self.epoch_fn()
        self.dataset.set_epoch(epoch)  # first: an elastic resume replays this epoch's order in start_fn
        plan = self.start_fn(epoch) if self.start_fn else ({}, 0)
        self.dataset.resume_from(*plan)
        return self._synced(super().__iter__(), resumed=bool(plan[0]) or bool(plan[2:] and plan[2]))

    def _synced(self, iterator, resumed: bool):
        count = 0
        while True:
            batch = next(iterator, None)
            if not _all_ranks_have(batch is not None):
                break
            count += 1
            yield batch
        if count == 0 and self.require_batches and not resumed:
            raise UserInputError(
                "the training data gave no batch in a whole epoch: it is empty, smaller than one batch per "
                "worker (data.batch_size x data.num_workers), or every sample was skipped"
            )
