"""Forward+backward time of this project's losses vs open_clip 3.3 in the same run, same inputs;
each configuration in a fresh process (see loss_harness.py), ours and the peer alternating.

    PYTHONPATH=. python benchmarks/loss_speed.py                    # W=4, b=2048, d=512; n=8192 tiled vs dense
    PYTHONPATH=. python benchmarks/loss_speed.py --worlds 2 4 --repeats 3
    PYTHONPATH=. python benchmarks/loss_speed.py --worlds --repeats 3     # only tiled vs dense at n=8192

Ratios below 1.0 mean ours is faster. The machine is shared: compare ratios, not seconds.
"""
from __future__ import annotations

import argparse
import statistics

from loss_harness import measure


def step_time(results):
    return max(r["step_s"] for r in results)  # a step ends when the slowest rank ends


def compare(pairs, configs, repeats):
    """Alternate ours and the peer ``repeats`` times; return the median time of each."""
    times = {name: [] for name in pairs}
    for _ in range(repeats):
        for name in pairs:
            times[name].append(step_time(measure(configs[name])))
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds", type=int, nargs="*", default=[4], help="ring sizes; none (bare --worlds): only the one-process rows")
    p.add_argument("--b", type=int, default=2048, help="pairs per rank")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--steps", type=int, default=3, help="timed steps per process (median)")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes per implementation")
    p.add_argument("--single-n", type=int, default=8192)
    p.add_argument("--tile", type=int, default=2048)
    p.add_argument("--softmax", action="store_true", help="also DistributedSoftmaxLoss vs open_clip ClipLoss")
    args = p.parse_args()

    print(f"## fwd+bwd seconds per step (median), fp32, d={args.d}, gloo, {args.repeats} fresh processes each")
    print("| case | ours | peer | ours / peer |")
    print("|---|---|---|---|")
    for world in args.worlds:
        rows = [("chunked", "open_clip-bidir", f"sigmoid W={world} b={args.b}: chunked vs open_clip bidir")]
        if args.softmax:
            rows.append(("softmax", "open_clip-clip", f"softmax W={world} b={args.b}: ours vs open_clip ClipLoss(local, gather_with_grad)"))
        for ours, peer, label in rows:
            cfg = {name: dict(impl=name, world=world, b=args.b, d=args.d, steps=args.steps) for name in (ours, peer)}
            t = compare((ours, peer), cfg, args.repeats)
            print(f"| {label} | {t[ours]:.3f} | {t[peer]:.3f} | {t[ours] / t[peer]:.2f} |", flush=True)
    n = args.single_n
    cfg = {name: dict(impl=name, world=1, b=n, d=args.d, steps=args.steps, tile=args.tile)
           for name in ("tiled", "dense", "open_clip-siglip")}
    t = compare(("tiled", "dense", "open_clip-siglip"), cfg, args.repeats)
    print(f"| one process n={n}: tiled (tile {args.tile}) vs dense SigmoidLoss | {t['tiled']:.3f} | {t['dense']:.3f} | {t['tiled'] / t['dense']:.2f} |")
    print(f"| one process n={n}: tiled vs open_clip SigLipLoss | {t['tiled']:.3f} | {t['open_clip-siglip']:.3f} | {t['tiled'] / t['open_clip-siglip']:.2f} |")


if __name__ == "__main__":
    main()
