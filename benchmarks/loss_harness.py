"""Shared harness of the loss benchmarks: one configuration = one fresh process (and its W ranks).

``measure(config)`` starts ``python loss_harness.py CONFIG_JSON`` in a new interpreter. That
process imports torch, this project and open_clip once, then forks W ranks that join a gloo group
(W = 1: no group). Each rank builds its inputs, records its resident set size (the baseline: the
interpreter, the libraries and the inputs), resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``), runs ``steps`` forward+backward passes of the loss and reports the
peak RSS above the baseline and the median step time. glibc's mmap threshold is fixed at 64 KiB
(``MALLOC_MMAP_THRESHOLD_``) for every configuration, so that freed buffers leave the RSS. Ranks write JSON files; the parent prints
them as one JSON list on stdout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Make VmHWM restart from the current RSS (Linux: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def make_loss(impl: str, rank: int, world: int, tile: int):
    from open_clip.loss import ClipLoss, SigLipLoss

    import siglip_lightning.losses as ours

    return {
        "chunked": lambda: ours.ChunkedSigmoidLoss(bidirectional=True),  # bidir, as open_clip
        "chunked-uni": lambda: ours.ChunkedSigmoidLoss(bidirectional=False),
        "chunked-tiled": lambda: ours.ChunkedSigmoidLoss(bidirectional=True, tile=tile),
        "open_clip-bidir": lambda: SigLipLoss(rank=rank, world_size=world, dist_impl="bidir"),
        "tiled": lambda: ours.TiledSigmoidLoss(tile=tile),
        "dense": lambda: ours.SigmoidLoss(local_negatives=True),
        "sigmoid": lambda: ours.SigmoidLoss(),  # what a recipe names: global (one-way ring on W > 1)
        "open_clip-siglip": lambda: SigLipLoss(),
        "softmax": lambda: ours.DistributedSoftmaxLoss(),
        "open_clip-clip": lambda: ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world),
    }[impl]()


def run_rank(rank: int, config: Dict, init: str, out_dir: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    world = config["world"]
    torch.set_num_threads(config.get("threads") or max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    dtype = getattr(torch, config.get("dtype", "float32"))
    g = torch.Generator().manual_seed(rank)
    b, d = config["b"], config["d"]
    x = F.normalize(torch.randn(b, d, generator=g), dim=-1).to(dtype).requires_grad_()
    y = F.normalize(torch.randn(b, d, generator=g), dim=-1).to(dtype).requires_grad_()
    t = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    loss_fn = make_loss(config["impl"], rank, world, config.get("tile", 2048))
    barrier = dist.barrier if world > 1 else (lambda: None)
    barrier()
    base = rss_mib()
    reset_peak()
    times = []
    for _ in range(config["steps"]):
        barrier()
        start = time.perf_counter()
        loss = loss_fn(x, y, t, bias)
        loss.backward()
        barrier()
        times.append(time.perf_counter() - start)
        x.grad = y.grad = t.grad = bias.grad = None
        del loss
    result = {"rank": rank, "baseline_mib": base, "peak_above_mib": rss_mib("VmHWM") - base,
              "step_s": sorted(times)[len(times) // 2], "times": times}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    if world > 1:
        dist.destroy_process_group()


def worker(config: Dict) -> List[Dict]:
    """Inside the fresh process: import once, fork the ranks, collect their results."""
    import socket

    import open_clip.loss  # noqa: F401  imported before the fork so every rank starts warm
    import torch.multiprocessing as mp

    import siglip_lightning.losses  # noqa: F401

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        init = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    with tempfile.TemporaryDirectory() as out:
        if config["world"] == 1:
            run_rank(0, config, init, out)
        else:
            mp.start_processes(run_rank, args=(config, init, out), nprocs=config["world"], start_method="fork")
        return [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(config["world"])]


def measure(config: Dict, timeout: int = 1800) -> List[Dict]:
    """Run one configuration in a fresh interpreter; returns one dict per rank."""
    # A fixed mmap threshold makes glibc return every large freed buffer to the OS at once, so RSS
    # follows the tensors the loss holds instead of what malloc keeps cached (the same for both).
    # config["pythonpath"]: another checkout of the project (a before/after comparison in one run).
    env = dict(os.environ, PYTHONPATH=config.get("pythonpath", REPO), HF_HUB_OFFLINE="1",
               MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), json.dumps(config)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"configuration {config} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
