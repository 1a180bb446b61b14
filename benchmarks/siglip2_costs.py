"""Cost of each SigLIP 2 objective against the sigmoid loss alone: step time and peak memory, as ratios.

Each arm trains the same towers on the same random batches for a few optimizer steps (forward,
backward, AdamW, the teacher's EMA) in its own process, every arm's objectives on from the first
step: sigmoid alone; + LocCa; + SILC; + TIPS; + all three. Step time: the median of the timed steps
(the first, warm-up, excluded). Peak memory: the process's peak resident set size during the steps
minus its size before them (on a CPU; ``torch.cuda.max_memory_allocated`` on a GPU).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/siglip2_costs.py --steps 6
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARMS = {"sigmoid": [], "+locca": ["locca"], "+silc": ["silc"], "+tips": ["tips"], "+all": ["locca", "silc", "tips"]}


def build(names, args):
    from siglip_lightning import SigLIPModule, TextTower, VisionTower
    from siglip_lightning.objectives import LocCaCaptioning, MaskedPrediction, SelfDistillation

    torch.manual_seed(0)
    make = {"locca": lambda: LocCaCaptioning(pad_id=0, eos_id=1),
            "silc": lambda: SelfDistillation(weight=0.25, start=0.0, local_crops=args.local_crops),
            "tips": lambda: MaskedPrediction(weight=0.0625, start=0.0)}
    image = VisionTower(image_size=args.image_size, patch_size=args.patch_size, width=args.width, layers=args.layers,
                        heads=args.width // 64)
    text = TextTower(vocab_size=args.vocab, context_length=16, width=args.width, layers=args.layers,
                     heads=args.width // 64, output_dim=args.width)
    return SigLIPModule(image, text, objectives=[make[n]() for n in names], warmup_steps=1)


def arm(names, args) -> dict:
    """Run in a child process: time the steps of one arm."""
    from siglip_lightning.model.objectives import objective_step, start_teacher_if_due, update_teacher

    module = build(names, args)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen),
             "text": torch.randint(2, args.vocab, (args.batch, 16), generator=gen)}
    gpu = torch.cuda.is_available()
    if gpu:
        module, batch = module.cuda(), {k: v.cuda() for k, v in batch.items()}
    module.log = lambda *a, **k: None  # no trainer here: the step's own work only
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        if names:
            start_teacher_if_due(module)
            _, loss = objective_step(module, batch)
        else:
            loss = module.compute_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        update_teacher(module)
        if gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() / 2**20) if gpu else \
        (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"step_s": statistics.median(times[1:]), "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--local-crops", type=int, default=8)
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm is not None:
        print(json.dumps(arm(ARMS[args.arm], args)))
        return
    results = {}
    for name in ARMS:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--arm", name], capture_output=True, text=True,
                             check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["sigmoid"]
    print("| arm | step (s) | time vs sigmoid | peak memory (MiB) | memory vs sigmoid |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['step_s']:.3f} | {r['step_s'] / base['step_s']:.2f}x | {r['peak_mib']:.0f} | "
              f"{r['peak_mib'] / max(base['peak_mib'], 1e-9):.2f}x |")


if __name__ == "__main__":
    main()
