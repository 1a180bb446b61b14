"""Per-rank peak memory of the chunked sigmoid loss vs open_clip 3.3's SigLipLoss(bidir), and of
the tiled loss vs the dense one; each configuration in a fresh process (see loss_harness.py).

    PYTHONPATH=. python benchmarks/loss_memory.py                       # b=2048, d=512, W=2,4,8
    PYTHONPATH=. python benchmarks/loss_memory.py --worlds 2 4 --b 512  # quicker

Prints the peak RSS rise above each rank's baseline (inputs already allocated) during forward +
backward, the worst rank, and the ratios: ours / open_clip at each W, and each loss at W / at the
smallest W (flat in W means about 1.0).
"""
from __future__ import annotations

import argparse

from loss_harness import measure


def worst(results):
    return max(r["peak_above_mib"] for r in results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds", type=int, nargs="*", default=[2, 4, 8])
    p.add_argument("--b", type=int, default=2048, help="pairs per rank")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--single-n", type=int, nargs="*", default=[8192, 32768],
                   help="one-process batch sizes for tiled (and dense where it fits: n <= --dense-max)")
    p.add_argument("--dense-max", type=int, default=8192)
    p.add_argument("--tile", type=int, default=2048)
    args = p.parse_args()

    impls = ("chunked", "chunked-uni", "open_clip-bidir")
    if args.worlds:
        print(f"## chunked sigmoid, fp32, b={args.b} per rank, d={args.d}, gloo; peak RSS above baseline, worst rank (MiB)")
        print("| W | ours bidir | ours one-way | open_clip bidir | ours bidir / open_clip | ours bidir W/W0 "
              "| ours one-way W/W0 | open_clip W/W0 |")
        print("|---|---|---|---|---|---|---|---|")
    first = {}
    for world in args.worlds:
        row = {}
        for impl in impls:
            row[impl] = worst(measure(dict(impl=impl, world=world, b=args.b, d=args.d, steps=args.steps)))
            first.setdefault(impl, row[impl])
        ours, uni, peer = (row[i] for i in impls)
        print(f"| {world} | {ours:.0f} | {uni:.0f} | {peer:.0f} | {ours / peer:.2f} | {ours / first['chunked']:.2f} | "
              f"{uni / first['chunked-uni']:.2f} | {peer / first['open_clip-bidir']:.2f} |", flush=True)

    if args.single_n:
        feats = lambda n: 2 * n * args.d * 4 / 2**20  # noqa: E731  x and y in fp32
        print(f"\n## one process, fp32, d={args.d}, tile={args.tile}: peak RSS above baseline (inputs allocated), MiB")
        print("| n | features x,y | ours tiled | ours tiled step s | dense SigmoidLoss | dense step s | tiled / dense memory | tiled / dense time |")
        print("|---|---|---|---|---|---|---|---|")
        for n in args.single_n:
            tiled = measure(dict(impl="tiled", world=1, b=n, d=args.d, steps=1, tile=args.tile))[0]
            dense = (measure(dict(impl="dense", world=1, b=n, d=args.d, steps=1))[0]
                     if n <= args.dense_max else None)
            cells = [f"{feats(n):.0f}", f"{tiled['peak_above_mib']:.0f}", f"{tiled['step_s']:.2f}"]
            if dense:
                cells += [f"{dense['peak_above_mib']:.0f}", f"{dense['step_s']:.2f}",
                          f"{tiled['peak_above_mib'] / dense['peak_above_mib']:.3f}",
                          f"{tiled['step_s'] / dense['step_s']:.2f}"]
            else:
                cells += ["(not run: n x n buffers)", "", "", ""]
            print(f"| {n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
