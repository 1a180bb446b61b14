"""Which examples one DataLoader worker of one rank reads: disjoint slots, deterministic per epoch.

Shard level when it divides evenly, example level otherwise (as ``datasets.split_dataset_by_node``):

* nodes: if the shard count divides by the world size, rank r takes every world-th shard of the
  epoch's shard order; otherwise every rank reads all shards and keeps every world-th example.
* workers: if the rank has at least as many shards as workers, worker w takes every W-th of them;
  otherwise all workers read the rank's shards and keep every W-th of the rank's examples.

Example indices count within a shard (after the validation hold-out), so the choice does not
depend on which process reads the shard. The union over all (rank, worker) slots is every example
once; slots may differ in size, which :mod:`siglip_lightning.data.loader` evens out across ranks.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Optional, Tuple


@dataclass(frozen=True)
class Slot:
    """The part of the data one worker of one rank reads in one epoch.

    Args:
        shards: shard indices, in reading order.
        node_stride: ``(world_size, rank)`` to keep example j when ``j % world_size == rank``, or None.
        worker_stride: ``(num_workers, worker)`` applied to ``j // world_size`` (after the node
            filter), or None.
    """

    shards: Tuple[int, ...]
    node_stride: Optional[Tuple[int, int]] = None
    worker_stride: Optional[Tuple[int, int]] = None

    def keeps(self, j: int) -> bool:
        """Whether the j-th (hold-out-filtered) example of a shard belongs to this slot."""
        if self.node_stride is not None:
            world, rank = self.node_stride
            if j % world != rank:
                return False
            j //= world
        if self.worker_stride is not None:
            workers, worker = self.worker_stride
            if j % workers != worker:
                return False
        return True


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> List[int]:
    """The shard reading order of an epoch: a seeded permutation when shuffling."""
    order = list(range(num_shards))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def plan_slot(num_shards: int, rank: int, world_size: int, worker: int, num_workers: int,
              seed: int = 0, epoch: int = 0, shuffle: bool = False) -> Slot:
    """The :class:`Slot` of ``(rank, worker)`` in ``epoch``."""
    order = shard_order(num_shards, seed, epoch, shuffle)
    node_stride = None
    if num_shards % world_size == 0:
        rank_shards = order[rank::world_size]
    else:
        rank_shards, node_stride = order, (world_size, rank)
    if len(rank_shards) >= num_workers:
        return Slot(tuple(rank_shards[worker::num_workers]), node_stride, None)
    return Slot(tuple(rank_shards), node_stride, (num_workers, worker))
