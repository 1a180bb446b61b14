"""Run a function on W real gloo processes (torch.multiprocessing, a tcp:// rendezvous on a free port).

The processes are forked, so they start in a fraction of a second with everything the test
process has imported (the package, open_clip, transformers); spawning fresh interpreters costs
10-30 s each on this shared machine. The parent never joins a process group itself, so forking is
safe for gloo. An exception in any rank fails the caller with that rank's traceback.
"""
from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world: int, init_method: str, fn, args) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # A short timeout turns a hang (mismatched exchanges) into a failure instead of a stuck test.
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_in_group(world: int, fn, *args) -> None:
    """Call ``fn(rank, world, *args)`` in ``world`` fresh processes joined in one gloo group."""
    init = f"tcp://127.0.0.1:{free_port()}"
    mp.start_processes(_entry, args=(world, init, fn, args), nprocs=world, join=True, start_method="fork")
