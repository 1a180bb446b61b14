"""What every tokenizer here offers: the one interface the datamodule, export and import call.

Captions in, a ``LongTensor[n, context_length]`` out (closed with ``eos_id``, padded with ``pad_id``);
``vocab_size`` is checked against the text tower's before training starts.
"""
from __future__ import annotations

from typing import Protocol, Sequence, Union, runtime_checkable

import torch


@runtime_checkable
class Tokenizer(Protocol):
    context_length: int
    pad_id: int
    eos_id: int

    @property
    def vocab_size(self) -> int: ...

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.Tensor: ...
