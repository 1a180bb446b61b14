"""NaFlex vs a fixed-resolution tower fed squashed images, on built-in data of varied aspect ratios.

``python -m siglip_lightning.experiments.naflex_compare [--steps N] [--seeds 0 1 2] [--out DIR]``

Both arms train the same size of ViT from ``configs/naflex.yaml`` for the same steps and batch on the
same data (shapes rendered at 1:``max_aspect`` .. ``max_aspect``:1, undistorted), at the same
compute: at most ``budget`` patches per image. The fixed arm resizes every image to a
``sqrt(budget) * patch`` square (squashing it, as SigLIP does); the NaFlex arm keeps the aspect ratio
within ``budget`` patches. Both are evaluated on zero-shot classification (the built-in set, also
rendered at varied aspect ratios) and image-text retrieval (the validation pairs) at the end.
Writes ``results.csv``, ``summary.md`` and ``plot.png``; each finished run is appended at once.
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import Dict, List

from siglip_lightning.config_files import packaged

FIELDS = ["arm", "seed", "zeroshot_top1", "r1_i2t", "r1_t2i", "r1_mean", "seconds"]


def run_args(arm: str, seed: int, steps: int, batch: int, budget: int, patch: int, data: Dict, root: Path) -> List[str]:
    side = int(math.isqrt(budget)) * patch
    args = ["fit", f"--config={packaged('naflex.yaml')}", f"--seed_everything={seed}",
            f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}", "--trainer.limit_val_batches=1",
            "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={root}", "--trainer.callbacks=[]",
            "--trainer.callbacks+=siglip_lightning.eval.ZeroShotClassification", "--trainer.callbacks.name=builtin",
            "--trainer.callbacks+=siglip_lightning.eval.Retrieval", "--trainer.callbacks.name=builtin",
            f"--data.batch_size={batch}", f"--data.seed={seed}", f"--model.warmup_steps={max(1, steps // 12)}"]
    args += [f"--data.builtin.{key}={value}" for key, value in data.items()]
    if arm == "naflex":
        args += [f"--data.naflex.patch_size={patch}", f"--data.naflex.budgets=[{budget}]",
                 f"--data.naflex.eval_budget={budget}", f"--model.image_tower.init_args.patch_size={patch}"]
    else:  # the same ViT at a fixed square resolution: SigLIP's squashing resize
        args += ["--data.naflex=null", f"--data.image_size={side}", "--model.image_tower=siglip_lightning.VisionTower",
                 f"--model.image_tower.init_args.image_size={side}", f"--model.image_tower.init_args.patch_size={patch}",
                 "--model.image_tower.init_args.width=64", "--model.image_tower.init_args.layers=2",
                 "--model.image_tower.init_args.heads=4"]
    return args


def one_run(arm: str, seed: int, options: argparse.Namespace, data: Dict, root: Path) -> Dict:
    from siglip_lightning.cli import cli_main

    start = time.time()
    cli = cli_main(run_args(arm, seed, options.steps, options.batch, options.budget, options.patch, data,
                            root / f"{arm}-{seed}"))
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    i2t, t2i = metrics["retrieval/builtin/image_to_text_R@1"] * 100, metrics["retrieval/builtin/text_to_image_R@1"] * 100
    return {"arm": arm, "seed": seed, "zeroshot_top1": metrics["zeroshot/builtin/top1"] * 100, "r1_i2t": i2t,
            "r1_t2i": t2i, "r1_mean": (i2t + t2i) / 2, "seconds": round(time.time() - start, 1)}


def report(out: Path) -> str:
    import pandas as pd

    frame = pd.read_csv(out / "results.csv")
    grouped = frame.groupby("arm")[["zeroshot_top1", "r1_mean", "r1_i2t", "r1_t2i", "seconds"]]
    mean, std, n = grouped.mean(), grouped.std(ddof=1).fillna(0.0), grouped.size()
    lines = ["| arm | zero-shot top-1, % | retrieval R@1 (mean), % | R@1 i→t | R@1 t→i | s / run | seeds |",
             "|---|---|---|---|---|---|---|"]
    for arm in mean.index:
        cell = lambda m: f"{mean.loc[arm, m]:.1f} ± {std.loc[arm, m]:.1f}"  # noqa: E731
        lines.append(f"| {arm} | {cell('zeroshot_top1')} | {cell('r1_mean')} | {cell('r1_i2t')} | {cell('r1_t2i')} | "
                     f"{mean.loc[arm, 'seconds']:.0f} | {n[arm]} |")
    table = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, metric, label in zip(axes, ("zeroshot_top1", "r1_mean"), ("zero-shot top-1, %", "retrieval R@1, %")):
        arms = list(mean.index)
        ax.bar(arms, mean[metric], yerr=std[metric], capsize=4, color=["tab:orange", "tab:blue"][: len(arms)])
        for i, arm in enumerate(arms):
            ax.scatter([i] * int(n[arm]), frame[frame.arm == arm][metric], color="black", s=10, zorder=3)
        ax.set_ylabel(label)
    fig.suptitle("NaFlex vs fixed-resolution (squashed) at the same patch budget, 1:2..2:1 images")
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=120)
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--budget", type=int, default=16, help="patches per image (a square number)")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=["fixed", "naflex"], choices=["fixed", "naflex"],
                        help="run only these arms (several processes can share the work: one --out each)")
    parser.add_argument("--max_aspect", type=float, default=2.0)
    parser.add_argument("--num_train", type=int, default=20000)
    parser.add_argument("--out", default=None)
    parser.add_argument("--report", action="store_true", help="only redraw summary.md and plot.png of --out")
    parser.add_argument("--merge", nargs="*", default=[], help="with --report: append these folders' results.csv first")
    options = parser.parse_args(argv)
    out = Path(options.out or f"runs/naflex_compare/{time.strftime('%Y%m%d-%H%M%S')}")
    if options.report:
        for other in options.merge:  # runs split over several processes
            rows = (Path(other) / "results.csv").read_text().splitlines()
            target = out / "results.csv"
            out.mkdir(parents=True, exist_ok=True)
            with open(target, "a") as f:
                f.write("\n".join(rows if not target.exists() or not target.read_text() else rows[1:]) + "\n")
        print(report(out))
        return
    out.mkdir(parents=True, exist_ok=True)
    data = {"max_aspect": options.max_aspect, "num_train": options.num_train, "num_validation": 1000,
            "zeroshot_per_class": 10, "image_size": 64}
    done = set()
    if (out / "results.csv").exists():
        with open(out / "results.csv") as f:
            done = {(r["arm"], int(r["seed"])) for r in csv.DictReader(f)}
    for seed in options.seeds:
        for arm in options.arms:
            if (arm, seed) in done:
                continue
            row = one_run(arm, seed, options, data, out)
            new = not (out / "results.csv").exists()
            with open(out / "results.csv", "a", newline="") as f:
                writer = csv.DictWriter(f, FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
            print(f"[naflex_compare] {row}", flush=True)
    print(report(out))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
