"""A finished cell's numbers, read from the metrics its run logged (CSVLogger's ``metrics.csv``).

The eval callbacks log ``retrieval/<name>/image_to_text_R@1`` ... and ``zeroshot/<name>/top1``;
the module logs ``train/t``, ``train/b`` (on the steps the logger writes) and ``val/loss``. The last
logged value of each is the cell's result; the report's columns are derived from them here.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict


def last_values(path: Path) -> Dict[str, float]:
    """The last non-empty value of every column of a CSVLogger ``metrics.csv``."""
    values: Dict[str, float] = {}
    if not path.exists():
        return values
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key and value not in (None, ""):
                    try:
                        values[key] = float(value)
                    except ValueError:
                        continue
    return values


def final_metrics(folder: Path) -> Dict[str, float]:
    """Report columns of one run folder: r1_i2t / r1_t2i / r1_mean (%), zeroshot_top1 (%), referring_acc,
    spatial_* and dense_* (%, when those evaluations ran), final_t / final_b."""
    logged = last_values(Path(folder) / "metrics.csv")
    out: Dict[str, float] = {}
    i2t = next((v for k, v in logged.items() if k.startswith("retrieval/") and k.endswith("/image_to_text_R@1")
                and k.count("/") == 2), None)
    t2i = next((v for k, v in logged.items() if k.startswith("retrieval/") and k.endswith("/text_to_image_R@1")
                and k.count("/") == 2), None)
    if i2t is not None and t2i is not None:
        out.update(r1_i2t=round(100 * i2t, 2), r1_t2i=round(100 * t2i, 2), r1_mean=round(50 * (i2t + t2i), 2))
    top1 = next((v for k, v in logged.items() if k.startswith("zeroshot/") and k.endswith("/top1")), None)
    if top1 is not None:
        out["zeroshot_top1"] = round(100 * top1, 2)
    if "val/referring_acc" in logged:  # LocCa's referring expressions (SigLIP 2 study)
        out["referring_acc"] = round(100 * logged["val/referring_acc"], 2)
    for prefix, keys in (("spatial", ("all", "relation", "colour")),  # the SigLIP 2 study's probes (eval/spatial.py,
                         ("dense", ("colour", "shape", "colour_majority", "shape_majority"))):  # eval/dense_probe.py)
        for key in keys:
            value = next((v for k, v in logged.items() if k.startswith(prefix + "/") and k.endswith("/" + key)
                          and k.count("/") == 2), None)
            if value is not None:
                out[f"{prefix}_{key}"] = round(100 * value, 2)
    if "train/t" in logged:
        out["final_t"] = round(logged["train/t"], 3)
    if "train/b" in logged:
        out["final_b"] = round(logged["train/b"], 3)
    for key, name in (("train/loss_step", "final_loss"), ("train/loss", "final_loss"), ("val/loss", "val_loss")):
        if key in logged and name not in out and math.isfinite(logged[key]):
            out[name] = round(logged[key], 4)
    return out
