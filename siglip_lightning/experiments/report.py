"""Summarise a sweep folder: mean ± std over seeds, paired differences, a markdown table and a PNG plot.

Reads ``results.csv`` (one row per finished cell: its axis values and the metrics its run logged,
see ``metrics.py``); the layout comes from the sweep config's ``report`` part: ``x``, ``series``
(one line each), optional ``panel``, ``logx``, ``chance`` and ``paper`` (text printed under the table).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import pandas as pd
import yaml

from siglip_lightning.experiments.paired import paired_markdown, paired_vs_baseline

PLOT_METRICS = ["r1_mean", "zeroshot_top1"]
LABELS = {"r1_mean": "retrieval R@1, % (mean of i→t and t→i)", "zeroshot_top1": "zero-shot top-1, %",
          "r1_i2t": "R@1 image→text, %", "r1_t2i": "R@1 text→image, %"}


SEED = "seed"


def load_results(folder: os.PathLike) -> pd.DataFrame:
    return pd.read_csv(Path(folder) / "results.csv")


def share_baseline(frame: pd.DataFrame, panel: Optional[str]) -> pd.DataFrame:
    """Runs whose ``panel`` value is ``none`` (e.g. p = 0: nothing corrupted) belong to every panel."""
    if not panel or panel not in frame or not (frame[panel] == "none").any():
        return frame
    base, rest = frame[frame[panel] == "none"], frame[frame[panel] != "none"]
    copies = [base.assign(**{panel: value}) for value in rest[panel].unique()]
    return pd.concat([rest, *copies], ignore_index=True)


def summarise(frame: pd.DataFrame, keys: List[str], metrics: List[str]) -> pd.DataFrame:
    """One row per ``keys`` combination: mean, std (over seeds, ddof=1; 0 for one seed) and n."""
    grouped = frame.groupby(keys, dropna=False)[metrics]
    mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    out = mean.add_suffix("_mean").join(std.add_suffix("_std"))
    out["n"] = grouped.size()
    return out.reset_index()


def _keys(config: dict) -> List[str]:
    plot = config.get("report", {})
    return [k for k in (plot.get("panel"), plot.get("x"), plot.get("series")) if k]


def paired_differences(frame: pd.DataFrame, config: dict, metric: str = "r1_mean") -> dict:
    """``{(panel, x) or (x,): [sigmoid − softmax per shared seed]}`` when the series are the two losses."""
    plot = config.get("report", {})
    x, series, panel = plot["x"], plot["series"], plot.get("panel")
    if SEED not in frame or metric not in frame or not {"sigmoid", "softmax"} <= set(frame[series]):
        return {}
    out = {}
    keys = ([panel] if panel else []) + [x]
    for values, block in frame.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        by = block.set_index([series, SEED])[metric]
        seeds = sorted(set(block[block[series] == "sigmoid"][SEED]) & set(block[block[series] == "softmax"][SEED]))
        out[values] = [float(by[("sigmoid", s)] - by[("softmax", s)]) for s in seeds]
    return out


def axis_rank(config: dict, key: str, value) -> tuple:
    """Sort key of an axis value: named levels (``objectives: {sigmoid: ..., locca: ...}``) in the config's
    order (the baseline arm first, as written), numbers before other strings, each in natural order."""
    levels = (config.get("axes") or {}).get(key)
    if isinstance(levels, dict) and "keys" not in levels and value in levels:
        return (0, list(levels).index(value), "")
    return (1 + isinstance(value, str), value if not isinstance(value, str) else 0, str(value))


def markdown_table(summary: pd.DataFrame, config: dict, metrics: List[str], paired: Optional[dict] = None) -> str:
    """Rows: (panel, x); columns: each series' metrics as mean ± std; a sigmoid − softmax gap if both."""
    plot = config.get("report", {})
    x, series, panel = plot["x"], plot["series"], plot.get("panel")
    names = list(dict.fromkeys(summary[series]))
    single = len(names) == 1  # one series (the SigLIP 2 study's one batch size): columns are the metrics
    header = ([panel] if panel else []) + [x] + [m if single else f"{m} {s}" for m in metrics for s in names]
    gap = {"sigmoid", "softmax"} <= set(names)
    if gap:
        header += [f"{m} sigmoid − softmax" for m in metrics]
    if paired:
        header.append(f"per-seed {metrics[0]} sigmoid − softmax")
    header.append("seeds")
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    row_keys = ([panel] if panel else []) + [x]
    groups = sorted(summary.groupby(row_keys, sort=True, dropna=False),
                    key=lambda item: tuple(axis_rank(config, k, v) for k, v in
                                           zip(row_keys, item[0] if isinstance(item[0], tuple) else (item[0],))))
    for values, block in groups:
        values = values if isinstance(values, tuple) else (values,)
        by = block.set_index(series)
        cells = [str(v) for v in values]
        for m in metrics:
            for s in names:
                # an arm without the metric (no decoder: no referring_acc) shows "–", not "nan"
                has = s in by.index and pd.notna(by.loc[s, m + "_mean"])
                cells.append(f"{by.loc[s, m + '_mean']:.1f} ± {by.loc[s, m + '_std']:.1f}" if has else "–")
        if gap:
            for m in metrics:
                if {"sigmoid", "softmax"} <= set(by.index):
                    cells.append(f"{by.loc['sigmoid', m + '_mean'] - by.loc['softmax', m + '_mean']:+.1f}")
                else:
                    cells.append("–")
        if paired:
            cells.append(", ".join(f"{d:+.1f}" for d in paired.get(values, [])) or "–")
        cells.append(str(int(by["n"].min())))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chance_level(spec: dict, metric: str, summary: pd.DataFrame) -> Optional[float]:
    """``report.chance``: a number (zero-shot's chance), or ``{metric: number or another column}`` (e.g. the
    dense probe's majority-class baseline, averaged over the cells)."""
    chance = spec.get("chance")
    if chance is None:
        return None
    if not isinstance(chance, dict):
        return chance if metric == "zeroshot_top1" else None
    level = chance.get(metric)
    if isinstance(level, str):
        return float(summary[level + "_mean"].mean()) if level + "_mean" in summary else None
    return level


def plot(summary: pd.DataFrame, config: dict, metrics: List[str], path: os.PathLike,
         reference: Optional[dict] = None) -> None:
    """One subplot per (panel value, metric); one line per series; error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = config.get("report", {})
    x, series, panel = spec["x"], spec["series"], spec.get("panel")
    panels = list(dict.fromkeys(summary[panel])) if panel else [None]
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(max(6.0, 4.2 * len(panels)), 3.3 * len(metrics)),
                             squeeze=False)
    xs_all = sorted(set(summary[x]), key=lambda v: axis_rank(config, x, v))
    categorical = any(isinstance(v, str) for v in xs_all)
    for col, value in enumerate(panels):
        part = summary if panel is None else summary[summary[panel] == value]
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            for name, line in part.groupby(series, sort=False):
                line = line.sort_values(x, key=lambda s: s.map(xs_all.index)) if categorical else line.sort_values(x)
                xs = [xs_all.index(v) for v in line[x]] if categorical else line[x]
                ax.errorbar(xs, line[f"{metric}_mean"], yerr=line[f"{metric}_std"], marker="o", capsize=3,
                            label=f"{series}={name}")
            if categorical:
                ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all])
            elif spec.get("logx"):
                ax.set_xscale("log", base=2)
            level = chance_level(spec, metric, summary)
            if level is not None:
                ax.axhline(level, color="grey", lw=0.8, ls=":", label="chance / majority")
            ax.set_xlabel(x)
            ax.set_ylabel(LABELS.get(metric, metric))
            if panel:
                ax.set_title(f"{panel} = {value}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    title = config.get("name", "")
    if config.get("quick"):
        title += " (QUICK run: smoke-sized, not the documented result)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(folder: os.PathLike, config: Optional[dict] = None) -> Path:
    """``summary.csv``, ``summary.md`` and ``plot.png`` next to ``results.csv``."""
    folder = Path(folder)
    if config is None:
        name = "sweep.yaml" if (folder / "sweep.yaml").exists() else "config.yaml"
        config = yaml.safe_load((folder / name).read_text())
    frame = load_results(folder)
    if frame.empty:
        raise RuntimeError(f"no successful runs in {folder / 'results.csv'}")
    config = config or {}
    if "report" not in config and "plot" in config:  # results folders written before the runner
        config = {**config, "report": config["plot"]}
    spec = config.get("report", {})
    shown = [m for m in spec.get("metrics", PLOT_METRICS) if m in frame]  # table and plot columns
    chance = spec.get("chance") if isinstance(spec.get("chance"), dict) else {}
    metrics = list(dict.fromkeys(
        [m for m in ("r1_mean", "r1_i2t", "r1_t2i", "zeroshot_top1") if m in frame] + shown
        + [c for c in chance.values() if isinstance(c, str) and c in frame]
        + [m for m in ("final_t", "final_b", "steps", "seconds") if m in frame]))
    frame = share_baseline(frame, spec.get("panel"))
    summary = summarise(frame, _keys(config), metrics)
    summary.to_csv(folder / "summary.csv", index=False)
    table = markdown_table(summary, config, shown, paired_differences(frame, config))
    if "baseline" in spec:  # every arm minus the baseline arm, seed by seed (paired.py)
        column, value = spec["baseline"]["column"], spec["baseline"]["value"]
        pairs = paired_vs_baseline(frame, column, value, shown, _keys(config))
        table += f"\nPer-seed paired differences (percentage points), each arm minus {value}:\n\n"
        table += paired_markdown(pairs, value)
    note = "QUICK run (smoke-sized; not the documented result)\n\n" if config.get("quick") else ""
    paper = config.get("report", {}).get("paper")
    paper = f"\n{paper.strip()}\n" if paper else ""
    (folder / "summary.md").write_text(f"# {config.get('name', 'sweep')}\n\n{note}{table}{paper}")
    plot(summary, config, shown, folder / "plot.png")
    return folder
