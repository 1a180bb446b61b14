"""Live tensor bytes over one step, op by op: what the planner reads memory from.

Every aten op passes through :class:`LiveBytes` (a dispatch mode); each storage it returns that was
not seen before is counted until Python frees it (a weak reference's callback), so views and in-place
ops cost nothing, as on a real allocator. Parameters' gradients are counted apart (the strategies
shard or bucket them differently), and after every op the tracker appends ``(phase, other, grads)``
to its timeline, so that a strategy can weigh each part and take the peak afterwards. Storages made
before the tracker started (parameters, optimizer state, the input batch) are not counted: the
planner adds them from their sizes. Works on fake tensors (no memory behind them) and on real ones.
"""
from __future__ import annotations

import weakref
from typing import Any, List, Tuple

import torch
from torch.utils.weak import WeakIdKeyDictionary

from siglip_lightning import _compat


def _tensors(value: Any):
    """The tensors an aten op returned (a tensor, or a tuple / list of them and other values)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


class _Record:
    __slots__ = ("nbytes", "is_grad")

    def __init__(self, nbytes: int) -> None:
        self.nbytes, self.is_grad = nbytes, False


class LiveBytes(_compat.dispatch_mode_class()):
    """Counts the bytes of the storages created inside it that are still alive, op by op.

    Attributes:
        timeline: ``(phase, other_bytes, grad_bytes)`` after every op.
        marks: ``name -> index`` into the timeline (see :meth:`mark`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._records = WeakIdKeyDictionary()
        self._refs: dict = {}
        self.other = self.grads = 0
        self.phase = "forward"
        self.timeline: List[Tuple[str, int, int]] = []
        self.marks: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for tensor in _tensors([args, list(kwargs.values())]):
            self._known(tensor)  # an input not seen before was made before the tracker: not counted
        out = func(*args, **kwargs)
        for tensor in _tensors(out):
            self._count(tensor)
        self.timeline.append((self.phase, self.other, self.grads))
        return out

    def _count(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._records:
            return
        record = _Record(storage.nbytes())
        self._records[storage] = record
        key = id(record)
        self._refs[key] = weakref.ref(storage, lambda _ref, record=record, key=key: self._free(record, key))
        self.other += record.nbytes

    def _known(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage not in self._records:
            self._records[storage] = _Record(0)

    def _free(self, record: _Record, key: int) -> None:
        self._refs.pop(key, None)
        if record.is_grad:
            self.grads -= record.nbytes
        else:
            self.other -= record.nbytes

    def watch_gradients(self, parameters) -> List[Any]:
        """Count the ``.grad`` of these parameters as gradients (returns the hook handles to remove)."""

        def as_gradient(param: torch.Tensor) -> None:
            record = self._records.get(param.grad.untyped_storage())
            if record is not None and not record.is_grad:
                record.is_grad = True
                self.other -= record.nbytes
                self.grads += record.nbytes

        return [p.register_post_accumulate_grad_hook(as_gradient) for p in parameters if p.requires_grad]

    def mark(self, name: str) -> None:
        """Remember this point of the step (e.g. where the loss starts)."""
        self.timeline.append((self.phase, self.other, self.grads))
        self.marks[name] = len(self.timeline) - 1

    def set_phase(self, phase: str) -> None:
        self.phase = phase
