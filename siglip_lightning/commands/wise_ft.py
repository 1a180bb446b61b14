"""``siglip-lightning wise-ft``: interpolate the initial and fine-tuned weights (WiSE-FT), and evaluate a grid of alpha.

    # one checkpoint for alpha = 0.5
    siglip-lightning wise-ft --finetuned runs/ft/checkpoints/last.ckpt --alpha 0.5 --out wise_0.5.ckpt
    # zero-shot + retrieval for each alpha: the run's evaluation config, validated per alpha
    siglip-lightning wise-ft --finetuned runs/ft/checkpoints/last.ckpt --alphas [0,0.25,0.5,0.75,1] \\
        --eval_config runs/ft/config.yaml --out runs/ft/wise_ft

The grid writes ``alpha_<a>.ckpt`` per alpha, runs ``siglip-lightning validate`` on each (the eval
callbacks of ``--eval_config``, e.g. ``ZeroShotClassification`` / ``Retrieval``), and prints and
writes ``wise_ft.csv``, ``wise_ft.md`` and ``wise_ft.png`` (every eval metric against alpha).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional

from jsonargparse import CLI

from siglip_lightning.errors import UserInputError
from siglip_lightning.model.wise_ft import write_interpolated

EVAL_PREFIXES = ("zeroshot/", "retrieval/", "val/")


def evaluate_alpha(ckpt: Path, eval_config: List[str], extra: List[str]) -> Dict[str, float]:
    from siglip_lightning.cli import cli_main

    args = ["validate"]
    for config in eval_config:
        args += ["--config", config]
    cli = cli_main(args + ["--ckpt_path", str(ckpt), "--trainer.logger=false", *extra])
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith(EVAL_PREFIXES)}


def write_report(rows: List[Dict[str, float]], out: Path) -> None:
    keys = ["alpha"] + sorted({k for row in rows for k in row if k != "alpha"})
    with open(out / "wise_ft.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{row.get(k, float('nan')):.4g}" for k in keys) + " |" for row in rows]
    (out / "wise_ft.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys[1:]:
        if not key.startswith("val/"):
            ax.plot([r["alpha"] for r in rows], [r.get(key, float("nan")) for r in rows], marker="o", label=key)
    ax.set_xlabel("alpha (0: initial weights, 1: fine-tuned)")
    ax.set_ylabel("metric")
    ax.set_title("WiSE-FT: weight interpolation")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "wise_ft.png", dpi=120)
    plt.close(fig)


def wise_ft(finetuned: str, out: str, alpha: Optional[float] = None, alphas: Optional[List[float]] = None,
            initial: Optional[str] = None, eval_config: Optional[List[str]] = None,
            eval_args: Optional[List[str]] = None) -> None:
    """WiSE-FT weights ``(1 - alpha) * initial + alpha * fine-tuned``, one checkpoint or a grid evaluated.

    Args:
        finetuned: the fine-tuned Lightning checkpoint.
        out: with ``alpha``, the checkpoint to write; with ``alphas``, a folder for the checkpoints and report.
        alpha: write one interpolated checkpoint.
        alphas: evaluate each of these (needs ``eval_config``).
        initial: the checkpoint fine-tuning started from; default: rebuilt from the run's settings
            (the ``--pretrained`` towers and t', b, or ``model.init_from``).
        eval_config: config files for ``siglip-lightning validate`` (the run's ``config.yaml``, plus one
            that adds eval callbacks if it has none).
        eval_args: further ``validate`` flags (e.g. ``--trainer.limit_val_batches=10``).
    """
    if (alpha is None) == (alphas is None):
        raise UserInputError("give exactly one of --alpha (write one checkpoint) or --alphas (evaluate a grid)")
    if alpha is not None:
        print(f"wrote {write_interpolated(finetuned, alpha, out, initial)} (alpha {alpha})")
        return
    if not eval_config:
        raise UserInputError("--alphas evaluates each alpha: give --eval_config (e.g. the run's config.yaml)")
    folder = Path(out)
    rows = []
    for value in alphas:
        ckpt = write_interpolated(finetuned, value, str(folder / f"alpha_{value:g}.ckpt"), initial)
        rows.append({"alpha": float(value), **evaluate_alpha(ckpt, eval_config, list(eval_args or []))})
        print(f"alpha {value:g}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[-1].items() if k != "alpha"))
    write_report(rows, folder)
    print(f"wrote {folder / 'wise_ft.csv'}, wise_ft.md and wise_ft.png")


def main(argv: List[str]) -> None:
    CLI(wise_ft, args=argv, as_positional=False, prog="siglip-lightning wise-ft")
