"""Forgetting under fine-tuning, on the built-in shapes data (issue 15).

    python -m siglip_lightning.experiments.forgetting --out runs/forgetting [--quick]

The 48 colour x shape classes are split in two checkerboard halves (A: colour index + shape index
even, B: odd; every colour and every shape is in both). A model is pre-trained on the pairs whose
objects all belong to A, then fine-tuned on the pairs of B, and zero-shot accuracy is measured on
both halves (24-way each, chance 4.2%): on A it measures forgetting, on B learning. Fine-tuning
variants: plain, layer-wise lr decay, the first block of each tower frozen; and WiSE-FT over alpha
on the plain run. Every run is an ordinary ``siglip-lightning fit`` (configs/quickstart.yaml plus
flags) and every evaluation an ordinary ``siglip-lightning wise-ft`` grid (``validate`` per alpha).
Writes ``results.csv``, ``table.md`` and ``plot.png`` under ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from siglip_lightning.config_files import packaged

ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]
VARIANTS = {"plain": [], "layer_decay_0.5": ["--model.layer_decay=0.5"],
            "freeze_first_block": ["--model.image_tower_frozen_blocks=1", "--model.text_tower_frozen_blocks=1"]}


def half_of(color: int, shape: int) -> str:
    return "A" if (color + shape) % 2 == 0 else "B"


def write_halves(out: Path, vocab_size: int) -> Dict[str, str]:
    """Pairs and zero-shot sets of each half (parquet) and a tokenizer trained on all captions."""
    import datasets

    from siglip_lightning.data.datamodule import ImageTextDataModule

    data = ImageTextDataModule(path="builtin", vocab_size=vocab_size)
    data.prepare_data()
    root, meta = data.builtin_root, json.loads((data.builtin_root / "zeroshot_classes.json").read_text())
    names = meta["class_names"]
    colors = list(dict.fromkeys(n.split(" ")[0] for n in names))
    shapes = list(dict.fromkeys(n.split(" ")[1] for n in names))
    half = {f"{c} {s}": half_of(i, j) for i, c in enumerate(colors) for j, s in enumerate(shapes)}
    phrase = re.compile(r"\b(" + "|".join(colors) + r") (" + "|".join(shapes) + r")\b")
    paths = {"tokenizer": str(data.tokenizer_file())}
    for name in ("A", "B"):
        folder = out / "data" / f"pairs_{name}"
        if not folder.is_dir():
            folder.mkdir(parents=True)
            for split in ("train", "validation"):
                rows = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in (root / "pairs").glob(f"{split}-*")),
                                             split="train")
                keep = rows.filter(lambda ex: all(half[" ".join(m)] == name for m in phrase.findall(ex["text"])))
                keep.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
        classes = [n for n in names if half[n] == name]
        zs = out / "data" / f"zeroshot_{name}"
        if not zs.is_dir():
            zs.mkdir(parents=True)
            table = datasets.load_dataset("parquet", data_files=str(root / "zeroshot" / "test-00000-of-00001.parquet"),
                                          split="train")
            table = table.filter(lambda ex: half[names[ex["label"]]] == name)
            table = table.map(lambda ex: {"label": classes.index(names[ex["label"]])})
            table = table.cast_column("label", datasets.ClassLabel(names=classes))
            table.to_parquet(str(zs / "test-00000-of-00001.parquet"))
        paths[f"pairs_{name}"], paths[f"zeroshot_{name}"] = str(folder), str(zs)
        paths[f"classes_{name}"] = classes
    return paths, meta["templates"]


def eval_config(out: Path, paths: dict, templates: List[str]) -> Path:
    callbacks = [{"class_path": "siglip_lightning.eval.ZeroShotClassification",
                  "init_args": {"name": f"half_{n}", "path": paths[f"zeroshot_{n}"],
                                "class_names": paths[f"classes_{n}"], "templates": templates}} for n in ("A", "B")]
    callbacks.append({"class_path": "siglip_lightning.checkpointing.ResumableCheckpoint",
                      "init_args": {"save_last": True}})
    path = out / "eval.yaml"
    path.write_text(json.dumps({"trainer": {"callbacks": callbacks, "logger": False}}))
    return path


def run(args: List[str], log: Path) -> None:
    # the children import this same package (a clone's or the installed one); they run where we run
    package_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p))
    with open(log, "w") as f:
        result = subprocess.run([sys.executable, "-m", "siglip_lightning", *args], env=env, stdout=f,
                                stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): siglip-lightning {' '.join(args)}; see {log}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/forgetting")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--pretrain_steps", type=int, default=400)
    parser.add_argument("--finetune_steps", type=int, default=150)
    parser.add_argument("--finetune_lr", type=float, default=3e-4)
    parser.add_argument("--quick", action="store_true", help="one seed, 30 + 20 steps (smoke)")
    parser.add_argument("--merge", nargs="+", default=None,
                        help="only report: the results.csv of these --out folders (e.g. one per seed, run in parallel)")
    args = parser.parse_args(argv)
    if args.merge:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        lines = [Path(folder, "results.csv").read_text().splitlines() for folder in args.merge]
        (out / "results.csv").write_text("\n".join([lines[0][0]] + [r for part in lines for r in part[1:]]) + "\n")
        return report(out)
    if args.quick:
        args.seeds, args.pretrain_steps, args.finetune_steps = [0], 30, 20
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths, templates = write_halves(out, vocab_size=512)
    evals = eval_config(out, paths, templates)
    common = ["--config", str(packaged("quickstart.yaml")), "--config", str(evals),
              f"--data.tokenizer_path={paths['tokenizer']}", "--trainer.enable_progress_bar=false",
              "--trainer.limit_val_batches=2", "--data.num_workers=0", f"--data.batch_size={args.batch_size}"]
    results = out / "results.csv"
    done = {(r["seed"], r["variant"], r["alpha"]) for r in csv.DictReader(open(results))} if results.exists() else set()
    for seed in args.seeds:
        pre = out / f"s{seed}" / "pretrain"
        if not (pre / "checkpoints" / "last.ckpt").exists():
            print(f"seed {seed}: pre-training on half A", flush=True)
            run(["fit", *common, f"--seed_everything={seed}", f"--data.path={paths['pairs_A']}",
                 f"--trainer.max_steps={args.pretrain_steps}", f"--trainer.val_check_interval={args.pretrain_steps}",
                 f"--trainer.default_root_dir={pre}"], out / f"s{seed}-pretrain.log")
        for variant, flags in VARIANTS.items():
            ft = out / f"s{seed}" / variant
            if not (ft / "checkpoints" / "last.ckpt").exists():
                print(f"seed {seed}: fine-tuning on half B ({variant})", flush=True)
                run(["fit", *common, f"--seed_everything={seed}", f"--data.path={paths['pairs_B']}",
                     f"--model.init_from={pre / 'checkpoints' / 'last.ckpt'}", f"--model.lr={args.finetune_lr}",
                     "--model.warmup_steps=20", f"--trainer.max_steps={args.finetune_steps}",
                     f"--trainer.val_check_interval={args.finetune_steps}", f"--trainer.default_root_dir={ft}", *flags],
                    out / f"s{seed}-{variant}.log")
            alphas = ALPHAS if variant == "plain" else [1.0]
            if all((str(seed), variant, str(a)) in done for a in alphas):
                continue
            grid = ft / "wise_ft"
            run(["wise-ft", "--finetuned", str(ft / "checkpoints" / "last.ckpt"), "--alphas", json.dumps(alphas),
                 "--out", str(grid), "--eval_config", json.dumps([common[1], common[3]]),
                 "--eval_args", json.dumps([f"--data.tokenizer_path={paths['tokenizer']}", "--data.num_workers=0",
                                            f"--data.path={paths['pairs_B']}", "--trainer.limit_val_batches=2"])],
                out / f"s{seed}-{variant}-wise.log")
            with open(grid / "wise_ft.csv") as f:
                rows = list(csv.DictReader(f))
            new = not results.exists()
            with open(results, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(["seed", "variant", "alpha", "zeroshot_A", "zeroshot_B"])
                for row in rows:
                    writer.writerow([seed, variant, float(row["alpha"]), row["zeroshot/half_A/top1"],
                                     row["zeroshot/half_B/top1"]])
    report(out)


def report(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.read_csv(out / "results.csv")
    frame["zeroshot_A"] *= 100
    frame["zeroshot_B"] *= 100
    summary = frame.groupby(["variant", "alpha"]).agg(
        A_mean=("zeroshot_A", "mean"), A_std=("zeroshot_A", "std"), B_mean=("zeroshot_B", "mean"),
        B_std=("zeroshot_B", "std"), seeds=("seed", "nunique")).reset_index()
    lines = ["| model | alpha | zero-shot half A (pre-training classes), % | zero-shot half B (fine-tuning classes), % | seeds |",
             "|---|---|---|---|---|"]
    start = summary[(summary.variant == "plain") & (summary.alpha == 0.0)]
    for _, r in start.iterrows():
        lines.append(f"| pre-trained on A (no fine-tuning) | - | {r.A_mean:.1f} ± {r.A_std:.1f} | "
                     f"{r.B_mean:.1f} ± {r.B_std:.1f} | {r.seeds} |")
    for _, r in summary[summary.alpha > 0].iterrows():
        name = r.variant if r.alpha == 1.0 else f"WiSE-FT of {r.variant}"
        lines.append(f"| {name} | {r.alpha:g} | {r.A_mean:.1f} ± {r.A_std:.1f} | {r.B_mean:.1f} ± {r.B_std:.1f} | {r.seeds} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    wise = summary[summary.variant == "plain"].sort_values("alpha")
    ax.errorbar(wise.B_mean, wise.A_mean, xerr=wise.B_std, yerr=wise.A_std, marker="o", label="WiSE-FT of plain (alpha 0..1)")
    for a, x, y in zip(wise.alpha, wise.B_mean, wise.A_mean):
        ax.annotate(f"α={a:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for variant, marker in (("layer_decay_0.5", "s"), ("freeze_first_block", "^")):
        r = summary[(summary.variant == variant) & (summary.alpha == 1.0)]
        ax.errorbar(r.B_mean, r.A_mean, xerr=r.B_std, yerr=r.A_std, marker=marker, linestyle="none", label=variant)
    ax.axhline(100 / 24, color="grey", linestyle=":", label="chance (24 classes)")
    ax.set_xlabel("zero-shot top-1 on half B (fine-tuning classes), %")
    ax.set_ylabel("zero-shot top-1 on half A (pre-training classes), %")
    ax.set_title(f"Forgetting on the built-in shapes ({frame.seed.nunique()} seeds, mean ± std)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=120)


if __name__ == "__main__":
    main()
