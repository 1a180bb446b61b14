"""Point-to-point plumbing of the chunked loss: who holds which text block when, and the sends.

Each "stream" moves text blocks one hop per step in one direction around the ring of ranks
(``direction`` +1: to the right neighbour). At step k a rank holds the block of rank
``rank - direction * k``. A block travels with a gradient accumulator that each visited rank adds
to; after the stream's last step the accumulator is sent straight home to the block's owner.
Every rank runs the same program, so the sends from rank a to rank b and the receives at b from
a are posted in the same order (NCCL matches by order); gloo also gets a distinct tag per message.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

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
        index: which stream (0 to 3: two directions x two passes), to keep tags apart.
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
        # kind 0: accumulator on its way, 1: accumulator going home, 2 + i: payload tensor i
        return (step * 4 + self.index) * 16 + kind

    def _like(self, t: torch.Tensor, owner: int) -> torch.Tensor:
        return torch.empty((self.sizes[owner], *t.shape[1:]), dtype=t.dtype, device=t.device)

    def send_payload(self, payload: List[torch.Tensor], step: int, buffers: List[List[torch.Tensor]]) -> Pending:
        """Forward the block held at ``step`` and receive the one for ``step + 1`` into ``buffers``."""
        nxt = [self._like(t, self.owner(step + 1)) for t in payload]
        buffers.append(nxt)
        to, frm = self.peer((self.rank + self.direction) % self.world), self.peer((self.rank - self.direction) % self.world)
        # both ends of a message tag it with the sender's step: they post it at the same point
        tags = [self.tag(step, 2 + i) for i in range(len(payload))]
        return exchange(list(zip(payload, [to] * len(payload), tags)), list(zip(nxt, [frm] * len(nxt), tags)),
                        self.group)

    def pass_accumulator(self, acc: torch.Tensor, step: int, buffers: List[torch.Tensor]) -> Pending:
        """Send the accumulator of the block held at ``step`` on: to the next rank, or home after the
        last step. Receive the accumulator of the next block (or of this rank's own block, home)."""
        if step < self.steps:
            nxt = self._like(acc, self.owner(step + 1))
            to, frm = (self.rank + self.direction) % self.world, (self.rank - self.direction) % self.world
            tag = self.tag(step, 0)
        else:
            nxt = self._like(acc, self.rank)
            to, frm = self.owner(step), (self.rank + self.direction * self.steps) % self.world
            tag = self.tag(step, 1)
        buffers.append(nxt)
        return exchange([(acc, self.peer(to), tag)], [(nxt, self.peer(frm), tag)], self.group)


def walk_ring(
    streams: List[Stream],
    payload: List[torch.Tensor],
    local: Callable[[], None],
    score: Callable[[List[torch.Tensor], Optional[torch.Tensor]], None],
    new_acc: Optional[Callable[[List[torch.Tensor]], torch.Tensor]] = None,
    home: Optional[Callable[[torch.Tensor], None]] = None,
) -> None:
    """Carry this rank's ``payload`` (tensors with one row per pair) round the ring.

    ``local()`` runs while the first hop is in flight. For every visiting block, ``score(block, acc)``
    is called; ``acc`` is the accumulator travelling with the block (``new_acc(block)`` on its first
    visit, else the one the previous rank passed on) and ``score`` updates it in place. After its
    last hop each accumulator goes straight home, where ``home(acc)`` receives it. With
    ``new_acc=None`` no accumulators travel. The next block's transfer overlaps the current block's
    scoring; an accumulator follows its block one step behind.
    """
    for s in streams:
        s.bufs = []
        s.block_req = s.send_payload(payload, 0, s.bufs) if s.steps else None
        s.acc_req = s.acc_in = s.acc_out = None
    local()
    for step in range(1, max(s.steps for s in streams) + 1):
        for s in streams:
            if step > s.steps:
                continue
            s.block_req.wait()
            block = s.bufs.pop(0)
            if step < s.steps:
                s.block_req = s.send_payload(block, step, s.bufs)
            acc = None
            if new_acc is not None and step > 1:
                s.acc_req.wait()  # short: the previous rank passed it on as soon as it had scored it
                acc, s.acc_in, s.acc_out = s.acc_in, None, None
            elif new_acc is not None:
                acc = new_acc(block)
            score(block, acc)
            if acc is not None:
                bufs: List[torch.Tensor] = []
                s.acc_req = s.pass_accumulator(acc, step, bufs)
                s.acc_in, s.acc_out = bufs[0], acc  # keep the outgoing one alive until sent
    for s in streams:
        if new_acc is not None and s.steps:
            s.acc_req.wait()
            home(s.acc_in)
        s.bufs = s.acc_in = s.acc_out = None
