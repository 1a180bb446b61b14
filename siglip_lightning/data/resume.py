"""Exact mid-epoch resume, also on another number of ranks or DataLoader workers (elastic).

Each training batch carries ``(logical worker, examples of that worker's order consumed)``. The
position is recorded when the batch reaches the model (not when the loader prefetches it),
gathered from all ranks into the checkpoint, and replayed by the workers on resume.

The state of an epoch is a list of *generations*: the layout ``(world_size, num_workers)`` it ran
with and every rank's worker positions. A resume with the same layout continues the last
generation exactly as the uninterrupted run would have. A resume with another layout starts a
new generation: every rank first replays, without decoding, the earlier generations' orders up to
their positions to learn which examples (by ``(shard, index in shard)`` key, with the source for
mixtures) were consumed, then reads the rest of the epoch in the new layout with those left out.
Every example of the epoch is then read once across the interruption, up to the usual epoch-end
drop (each worker's last partial batch, the longer ranks' surplus). The cost is one read of the
consumed part of the epoch per rank (reads, not decodes), and the keys held in memory.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info

from siglip_lightning.errors import UserInputError
from siglip_lightning.ranks import world_size

VERSION = 2


def _fresh(epoch: int) -> Dict[str, Any]:
    return {"epoch": epoch, "positions": {}, "last_worker": -1, "batches": 0}


def consumed_keys(stream, generations: List[Dict[str, Any]]) -> Set[tuple]:
    """Keys of the examples read by ``generations`` (in order; each read without the earlier ones)."""
    consumed: Set[tuple] = set()
    for generation in generations:
        world, workers = generation["world_size"], generation["num_workers"]
        read: Set[tuple] = set()
        for rank, progress in enumerate(generation["ranks"]):
            replay = stream.with_layout(rank, world)
            replay.resume_from({}, 0, frozenset(consumed))
            for worker, position in progress["positions"].items():
                if position <= 0:
                    continue
                for count, (key, _) in enumerate(replay.raw_examples(int(worker), workers), start=1):
                    read.add(key)
                    if count >= position:
                        break
        consumed |= read
    return consumed


class StreamProgress:
    """Where the training stream of one rank stands, and what a checkpoint holds of it."""

    def __init__(self) -> None:
        self.current = _fresh(-1)
        self.history: List[Dict[str, Any]] = []  # earlier generations of the current epoch
        self.pending: Optional[Dict[str, Any]] = None  # loaded, applied at the next epoch start
        self.layout: Tuple[int, int] = (1, 1)
        self.shards: Optional[List[int]] = None  # shards of each source, saved to catch changed data

    def record(self, worker: int, position: int) -> None:
        self.current["positions"][int(worker)] = int(position)
        self.current["last_worker"] = int(worker)
        self.current["batches"] = self.current.get("batches", 0) + 1

    def start_epoch(self, epoch: int, stream, rank: int, world: int, workers: int):
        """``(positions, worker offset, excluded keys, batches)`` the stream starts the pass of ``epoch``
        from; ``batches``: how many batches of this generation reached the model (the same on every rank)."""
        pending, self.pending = self.pending, None
        self.layout, self.shards = (world, workers), list(stream.shard_counts())
        if pending is not None and pending.get("shards") not in (None, self.shards):
            raise UserInputError(
                f"the checkpoint's data position was saved with {pending['shards']} shards per source, the data now "
                f"has {self.shards}: the saved positions would point at other examples. Resume with the same "
                "data (data.path / data.sources), or from a checkpoint taken at an epoch boundary")
        if pending is None or pending["epoch"] != epoch:
            self.current, self.history = _fresh(epoch), []
            return {}, 0, frozenset(), 0
        generations = list(pending["generations"])
        last = generations[-1]
        same = (last["world_size"], last["num_workers"]) == (world, workers)
        self.history = generations[:-1] if same else generations
        excluded = frozenset(consumed_keys(stream, self.history)) if self.history else frozenset()
        if not same:
            rank_zero_info(f"data: elastic resume of epoch {epoch} on world_size={world}, num_workers={workers} "
                           f"(saved with {last['world_size']} and {last['num_workers']}): {len(excluded)} examples "
                           "already read in this epoch are left out")
            self.current = _fresh(epoch)
            return {}, 0, excluded, 0
        mine = last["ranks"][rank]
        batches = int(mine.get("batches", 0))  # absent in checkpoints written before it was recorded
        self.current = {"epoch": epoch, "positions": dict(mine["positions"]), "last_worker": mine["last_worker"],
                        "batches": batches}
        return dict(mine["positions"]), (mine["last_worker"] + 1) % workers, excluded, batches

    def state_dict(self, epoch_consumed: bool, gather: Callable[[Any], List[Any]]) -> Dict[str, Any]:
        """The checkpoint's data state; ``gather`` collects one object from every rank (all ranks call it)."""
        mine = {"positions": dict(self.current["positions"]), "last_worker": self.current["last_worker"],
                "batches": self.current.get("batches", 0)}
        epoch, history = self.current["epoch"], self.history
        if epoch_consumed:  # Lightning ends the epoch after this batch: a resume starts the next one afresh
            epoch, history, mine = epoch + 1, [], {"positions": {}, "last_worker": -1, "batches": 0}
        world, workers = self.layout
        generation = {"world_size": world, "num_workers": workers, "ranks": gather(mine)}
        return {"version": VERSION, "epoch": epoch, "shards": self.shards, "generations": [*history, generation]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("version") != VERSION:
            if "stream" not in state:
                return
            # the first format: one generation, the same epoch on every rank
            ranks = [{"positions": s["positions"], "last_worker": s["last_worker"]} for s in state["stream"]]
            state = {"version": VERSION, "epoch": state["stream"][0]["epoch"], "generations": [
                {"world_size": state["world_size"], "num_workers": state["num_workers"], "ranks": ranks}]}
        for generation in state["generations"]:  # checkpoints store worker ids as keys: make them ints again
            for ranked in generation["ranks"]:
                ranked["positions"] = {int(k): int(v) for k, v in ranked["positions"].items()}
        self.pending = state


def gather_from_ranks(mine: Any) -> list:
    """Every rank's ``mine``, in rank order (every rank saves; rank 0's file needs all positions)."""
    world = world_size()
    if world == 1:
        return [mine]
    ranks = [None] * world
    dist.all_gather_object(ranks, mine)
    return ranks
