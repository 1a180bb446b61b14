"""Point-to-point plumbing of the chunked loss: who holds which text block when, and the sends.

Each "stream" moves text blocks one hop per step in one direction around the ring of ranks
(``direction`` +1: to the right neighbour). At step k a rank holds the block of rank
``rank - direction * k``. A block travels with a gradient accumulator that each visited rank adds
to; after the stream's last step the accumulator is sent straight home to the block's owner.
Every rank runs the same program, so the sends from rank a to rank b and the receives at b from
a are posted in the same order (NCCL matches by order); gloo also gets a distinct tag per message.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.distributed as dist


class Pending:
    """Outstanding P2P requests; ``wait`` blocks until all have completed."""

    def __init__(self, requests: Optional[List] = None) -> None:
        self.requests = requests or []

    def wait(self) -> None:
        for request in self.requests:
            request.wait()
        self.requests = []


def exchange(sends: Sequence, recvs: Sequence, group) -> Pending:
    """Post sends ``(tensor, peer, tag)`` and receives ``(buffer, peer, tag)`` as one batch."""
    ops = [dist.P2POp(dist.isend, t, peer, group=group, tag=tag) for t, peer, tag in sends]
    ops += [dist.P2POp(dist.irecv, t, peer, group=group, tag=tag) for t, peer, tag in recvs]
    if not ops:
        return Pending()
    return Pending(dist.batch_isend_irecv(ops))


class Stream:
    """Text blocks flowing around the ring in one direction for ``steps`` hops.

    Args:
        index: which stream (0 or 1), to keep tags apart.
        direction: +1 (blocks move to the right neighbour) or -1.
        steps: number of foreign blocks this stream brings to each rank.
        rank: this process's rank in ``group``.
        sizes: rows of every rank's block (ranks may differ: a short last batch).
        group: the process group; global ranks are looked up for P2P.
    """

    def __init__(self, index: int, direction: int, steps: int, rank: int, sizes: List[int], group) -> None:
        self.index, self.direction, self.steps = index, direction, steps
        self.rank, self.sizes, self.group = rank, sizes, group
        self.world = len(sizes)

    def owner(self, step: int) -> int:
        """Group rank whose block this rank holds at ``step``."""
        return (self.rank - self.direction * step) % self.world

    def peer(self, group_rank: int) -> int:
        return dist.get_global_rank(self.group, group_rank) if self.group is not None else group_rank

    def tag(self, step: int, kind: int) -> int:
        # kind 0: text block, 1: accumulator on its way, 2: accumulator going home
        return ((step * 2 + self.index) * 3) + kind

    def send_block(self, block: torch.Tensor, step: int, buffers: List[torch.Tensor]) -> Pending:
        """Forward the block held at ``step`` and receive the one for ``step + 1`` into ``buffers``."""
        nxt = torch.empty((self.sizes[self.owner(step + 1)], block.shape[1]), dtype=block.dtype, device=block.device)
        buffers.append(nxt)
        to, frm = self.peer((self.rank + self.direction) % self.world), self.peer((self.rank - self.direction) % self.world)
        # both ends of a message tag it with the sender's step: they post it at the same point
        return exchange([(block, to, self.tag(step, 0))], [(nxt, frm, self.tag(step, 0))], self.group)

    def pass_accumulator(self, acc: torch.Tensor, step: int, buffers: List[torch.Tensor]) -> Pending:
        """Send the accumulator of the block held at ``step`` on: to the next rank, or home after the
        last step. Receive the accumulator of the next block (or of this rank's own block, home)."""
        if step < self.steps:
            nxt = torch.empty((self.sizes[self.owner(step + 1)], acc.shape[1]), dtype=acc.dtype, device=acc.device)
            to = (self.rank + self.direction) % self.world
            frm = (self.rank - self.direction) % self.world
            tag_out = tag_in = self.tag(step, 1)
        else:
            nxt = torch.empty((self.sizes[self.rank], acc.shape[1]), dtype=acc.dtype, device=acc.device)
            to = self.owner(step)
            frm = (self.rank + self.direction * self.steps) % self.world
            tag_out = tag_in = self.tag(step, 2)
        buffers.append(nxt)
        return exchange([(acc, self.peer(to), tag_out)], [(nxt, self.peer(frm), tag_in)], self.group)
