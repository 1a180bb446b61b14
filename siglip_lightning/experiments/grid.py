"""Run a grid of SigLiT text-tower runs from a YAML config; write CSV, markdown table and PNG plot.

A config (see ``configs/experiments/*.yaml``) has:
- ``setup``: :class:`~siglip_lightning.experiments.siglit.SiglitSetup` fields (data, locked image tower);
- ``run``: keyword arguments of :func:`~siglip_lightning.experiments.textrun.train_text_tower` shared by all runs;
- ``grid``: ``name: [values]``; every combination is one run (``seed`` gives the error bars);
- ``plot``: ``x``, ``series`` (one line each), optional ``panel``, ``logx``, ``metrics``;
- ``quick``: the same keys, overriding the rest under ``--quick`` (a smoke-sized run).
Each finished run is appended to ``results.csv`` at once, so an interrupted grid keeps its results.
"""
from __future__ import annotations

import copy
import csv
import itertools
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from siglip_lightning.errors import UserInputError

SUMMARY_METRICS = ["r1_mean", "r1_i2t", "r1_t2i", "zeroshot_top1", "final_t", "final_b", "seconds"]
METRIC_LABELS = {"r1_mean": "retrieval R@1 (mean of i→t, t→i), %", "zeroshot_top1": "zero-shot top-1, %",
                 "r1_i2t": "R@1 image→text, %", "r1_t2i": "R@1 text→image, %"}


def deep_update(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        out[key] = deep_update(out.get(key, {}), value) if isinstance(value, dict) and key != "grid" else value
    return out


def load_config(path: os.PathLike, quick: bool = False) -> dict:
    """Read a grid config; ``quick`` applies its ``quick`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"experiment config not found: {path}")
    config = yaml.safe_load(path.read_text()) or {}
    unknown = set(config) - {"name", "setup", "run", "grid", "plot", "quick", "workers", "description"}
    if unknown:
        raise UserInputError(f"{path}: unknown top-level keys {sorted(unknown)}")
    if not isinstance(config.get("grid"), dict) or not config["grid"]:
        raise UserInputError(f"{path}: 'grid' must map parameter names to lists of values")
    quick_part = config.pop("quick", {}) or {}
    if quick:
        config = deep_update(config, quick_part)
        config["quick"] = True
    return config


def expand_grid(grid: Dict[str, list]) -> List[dict]:
    """Every combination of the grid's values; runs without corruption share one p = 0 run."""
    keys = list(grid)
    runs, seen = [], set()
    for values in itertools.product(*(grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys)):
        run = dict(zip(keys, values))
        if run.get("corruption_p", None) == 0:
            run["corruption"] = "none"
        key = json.dumps(run, sort_keys=True)
        if key not in seen:
            seen.add(key)
            runs.append(run)
    # seed by seed, so that an interrupted grid still holds whole curves (with fewer seeds)
    return sorted(runs, key=lambda r: (r.get("seed", 0), r.get("batch_size", 0)))


_DATA = None


def _init_worker(path: str, threads: int) -> None:
    import torch

    from siglip_lightning.experiments.siglit import load_siglit_data

    global _DATA
    torch.set_num_threads(threads)
    _DATA = load_siglit_data(path)


def _run_one(kwargs: dict) -> dict:
    from siglip_lightning.experiments.textrun import train_text_tower

    try:
        result = train_text_tower(_DATA, **kwargs)
    except RuntimeError as err:  # a diverged run is a result, not a crash of the grid
        return {**kwargs, "error": str(err)}
    # every setting of the run goes in its row (a grid over e.g. lr_base needs the column to group by)
    return {**result, **{k: v for k, v in kwargs.items() if k not in result}}


def run_grid(config: dict, out_dir: os.PathLike, workers: Optional[int] = None, progress: bool = True) -> Path:
    """Build (or reuse) the cached SigLiT data, run every grid point, write the results folder."""
    from tqdm.auto import tqdm

    from siglip_lightning.experiments.report import write_report
    from siglip_lightning.experiments.siglit import SiglitSetup, ensure_siglit_data

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, int(workers or config.get("workers", 2)))
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    setup = SiglitSetup(**config.get("setup", {}))
    started = time.time()
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1 if workers > 1 else threads)  # the image-tower stage; renders use `workers`
    data_path = ensure_siglit_data(setup, workers=workers, progress=progress)
    torch.set_num_threads(threads)
    setup_seconds = time.time() - started
    runs = [{**config.get("run", {}), **point} for point in expand_grid(config["grid"])]
    csv_path = out / "results.csv"
    rows: List[dict] = []
    fields: Optional[List[str]] = None
    pool = None
    if workers > 1:  # one thread per process: small runs scale better across processes than threads
        pool = multiprocessing.get_context("spawn").Pool(min(workers, len(runs)), _init_worker, (str(data_path), 1))
        results = pool.imap_unordered(_run_one, runs)
    else:
        global _DATA
        from siglip_lightning.experiments.siglit import load_siglit_data

        _DATA = load_siglit_data(data_path)
        results = map(_run_one, runs)
    with csv_path.open("w", newline="") as handle:
        bar = tqdm(results, total=len(runs), desc=config.get("name", "grid"), disable=not progress)
        for row in bar:
            rows.append(row)
            if fields is None:
                fields = list(row) + [k for k in ("error",) if k not in row]
                writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
                writer.writeheader()
            writer.writerow(row)
            handle.flush()
            bar.set_postfix(last=f"{row.get('loss')} B={row.get('batch_size')} R@1={row.get('r1_mean', 'err')}")
    if pool is not None:
        pool.close()
        pool.join()
    meta = {"setup_seconds": round(setup_seconds, 1), "grid_seconds": round(time.time() - started - setup_seconds, 1),
            "workers": workers, "runs": len(runs), "cache": str(data_path), "load_avg_at_end": os.getloadavg()}
    (out / "timing.json").write_text(json.dumps(meta, indent=1))
    write_report(out, config)
    return out
