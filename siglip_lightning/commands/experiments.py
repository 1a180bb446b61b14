"""``siglip-lightning experiments --config configs/experiments/batchsize_sweep.yaml [--quick] [--base FIT.yaml ...]``

Runs a sweep: a grid of ordinary ``siglip-lightning fit`` runs (one run folder per cell under
``<out>/cells/``), then writes ``results.csv``, ``summary.md`` and ``plot.png`` from the metrics
the runs logged. The same command restarts a killed sweep: finished cells are skipped, an
unfinished one resumes from its last checkpoint. ``--report DIR`` only redraws the table and plot.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import yaml
from jsonargparse import ActionYesNo, ArgumentParser

from siglip_lightning.errors import UserInputError


def write_results(rows: List[dict], path: Path) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def run_sweep(config: dict, out: Path, workers: Optional[int] = None, progress: bool = True) -> Path:
    """Prepare (if the config says so), run every unfinished cell, write the results and the report."""
    from siglip_lightning.experiments.report import write_report
    from siglip_lightning.experiments.runner import install_sigterm_handler, run_cells

    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    install_sigterm_handler()
    started = time.time()
    prepared = None
    prepare = config.get("prepare") or {}
    if "siglit" in prepare:
        from siglip_lightning.experiments.siglit import prepare_siglit

        prepared = prepare_siglit(prepare["siglit"], threads=max(1, int(workers or config.get("workers", 1))),
                                  progress=progress)
    elif prepare:
        raise UserInputError(f"unknown prepare stage(s) {sorted(prepare)}; known: siglit")
    prepare_seconds = time.time() - started
    rows = run_cells(config, out, prepared, workers, progress)
    if rows:
        write_results(rows, out / "results.csv")
    timing = {"prepare_seconds": round(prepare_seconds, 1), "cells_seconds": round(time.time() - started - prepare_seconds, 1),
              "cells_finished": len(rows), "load_avg_at_end": os.getloadavg()}
    (out / "timing.json").write_text(json.dumps(timing, indent=1))
    if rows:
        write_report(out, config)
    return out


def print_cells(config: dict) -> None:
    """What the sweep would run: its base configs, then one line per cell."""
    from siglip_lightning.experiments.sweep import expand

    cells = expand(config)
    print(f"sweep {config['name']}: {len(cells)} cells over base " + " ".join(config["base"]))
    for cell in cells:
        print(f"  {cell.name}: global_batch={cell.global_batch} steps={cell.steps}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = ArgumentParser(prog="siglip-lightning experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Optional[str], default=None,
                        help="sweep config (YAML), e.g. configs/experiments/batchsize_sweep.yaml")
    parser.add_argument("--quick", action=ActionYesNo, default=False, help="apply the config's smoke-sized 'quick' part")
    parser.add_argument("--base", type=Optional[str], default=None,
                        help="fit config(s), space-separated, replacing the sweep's base (e.g. a recipe, a "
                             "strategy fragment and a data config)")
    parser.add_argument("--out", type=Optional[str], default=None,
                        help="sweep folder (default runs/<name>[_quick]); the same folder restarts the sweep")
    parser.add_argument("--workers", type=Optional[int], default=None, help="cells run at once (processes)")
    parser.add_argument("--list", action=ActionYesNo, default=False,
                        help="print the base configs and the cells (global batch, steps), run nothing")
    parser.add_argument("--report", type=Optional[str], default=None,
                        help="only rewrite summary.md and plot.png of this sweep folder")
    args = parser.parse_args(argv)
    from siglip_lightning.experiments.report import write_report
    from siglip_lightning.experiments.sweep import load_sweep

    try:
        if args.report:
            print(write_report(args.report) / "summary.md")
            return
        if not args.config:
            raise UserInputError("give --config (or --report DIR)")
        base = args.base.replace(",", " ").split() if args.base else None
        config = load_sweep(args.config, quick=args.quick, base=base)
        name = config["name"] + ("_quick" if args.quick else "")
        if args.list:
            print_cells(config)
            return
        out = Path(args.out) if args.out else Path("runs") / name
        folder = run_sweep(config, out, workers=args.workers)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue the sweep", file=sys.stderr)
        raise SystemExit(130)
    summary = folder / "summary.md"
    if summary.exists():
        print(summary.read_text())
    print(f"results: {folder}")
