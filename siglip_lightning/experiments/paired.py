"""Per-seed paired differences of every arm against a baseline arm, for every metric (the SigLIP 2 study:
each objective arm minus sigmoid alone, seed by seed, so that seed-to-seed spread does not hide a gap).

Set by the sweep config's ``report.baseline: {column: objectives, value: sigmoid}``.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import pandas as pd

SEED = "seed"


def paired_vs_baseline(frame: pd.DataFrame, column: str, baseline: str, metrics: List[str],
                       keys: List[str] = ()) -> Dict[Tuple[str, str], List[Tuple[int, float]]]:
    """``{(arm, metric): [(seed, arm − baseline), ...]}`` over the seeds both ran; cells that differ in
    another axis (``keys``) are paired only with the baseline cell of the same values."""
    others = [k for k in keys if k not in (column, SEED)]
    out: Dict[Tuple[str, str], List[Tuple[int, float]]] = {}
    base = frame[frame[column] == baseline].set_index(others + [SEED])
    for arm in dict.fromkeys(frame[column]):
        if arm == baseline:
            continue
        rows = frame[frame[column] == arm].set_index(others + [SEED])
        shared = rows.index.intersection(base.index).sort_values()
        for metric in metrics:
            if metric not in frame or rows[metric].isna().all() or base[metric].isna().all():
                continue
            out[(arm, metric)] = [(int(key[-1] if isinstance(key, tuple) else key),
                                   float(rows.loc[key, metric] - base.loc[key, metric])) for key in shared]
    return out


def paired_markdown(paired: Dict[Tuple[str, str], List[Tuple[int, float]]], baseline: str) -> str:
    """A table: one row per (arm, metric): each seed's difference, their mean, and how many are > 0."""
    if not paired:
        return ""
    seeds = sorted({seed for diffs in paired.values() for seed, _ in diffs})
    header = ["arm − " + baseline, "metric"] + [f"seed {s}" for s in seeds] + ["mean", "seeds > 0"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (arm, metric), diffs in paired.items():
        by = dict(diffs)
        cells = [arm, metric] + [f"{by[s]:+.1f}" if s in by else "–" for s in seeds]
        values = list(by.values())
        cells += [f"{sum(values) / len(values):+.1f}" if values else "–", f"{sum(v > 0 for v in values)}/{len(values)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
