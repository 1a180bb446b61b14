"""The one answer to "is torch.distributed in use, with how many ranks, and on which device do its
collectives run" for the whole package (losses, data loader, evaluation, gradient caching)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group (of any size)."""
    return dist.is_available() and dist.is_initialized()


def world_size(group: Optional[dist.ProcessGroup] = None) -> int:
    """Ranks in ``group`` (default: the world), or 1 when torch.distributed is not in use."""
    return dist.get_world_size(group) if is_distributed() else 1


def rank_and_world(group: Optional[dist.ProcessGroup] = None) -> Tuple[int, int]:
    """(this rank, world size) of ``group``; (0, 1) without torch.distributed."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def collective_device(group: Optional[dist.ProcessGroup] = None) -> torch.device:
    """Where small control tensors for a collective must live: the current GPU for NCCL, else the CPU."""
    if is_distributed() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
