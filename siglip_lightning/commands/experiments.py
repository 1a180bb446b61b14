"""``siglip-lightning experiments --config configs/experiments/batchsize_sweep.yaml [--quick]``

Runs a grid of SigLiT text-tower runs and writes ``results.csv``, ``summary.md`` and ``plot.png`` into
``runs/<name>/<timestamp>/`` (or ``--out``). ``--report DIR`` only redraws the table and plot of a
finished (or interrupted) folder.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

from jsonargparse import ActionYesNo, ArgumentParser

from siglip_lightning.errors import UserInputError


def main(argv: Optional[List[str]] = None) -> None:
    parser = ArgumentParser(prog="siglip-lightning experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Optional[str], default=None,
                        help="grid config (YAML), e.g. configs/experiments/batchsize_sweep.yaml")
    parser.add_argument("--quick", action=ActionYesNo, default=False, help="apply the config's smoke-sized 'quick' overrides")
    parser.add_argument("--out", type=Optional[str], default=None, help="results folder (default runs/<name>/<timestamp>)")
    parser.add_argument("--workers", type=Optional[int], default=None, help="parallel runs (processes, one thread each)")
    parser.add_argument("--threads", type=Optional[int], default=None, help="torch threads of an in-process run (--workers 1)")
    parser.add_argument("--report", type=Optional[str], default=None,
                        help="only rewrite summary.md and plot.png of this results folder")
    args = parser.parse_args(argv)
    from siglip_lightning.experiments.grid import load_config, run_grid
    from siglip_lightning.experiments.report import write_report

    try:
        if args.report:
            print(write_report(args.report) / "summary.md")
            return
        if not args.config:
            raise UserInputError("give --config (or --report DIR)")
        config = load_config(args.config, quick=args.quick)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        name = config.get("name", Path(args.config).stem) + ("_quick" if args.quick else "")
        out = Path(args.out) if args.out else Path("runs") / name / time.strftime("%Y%m%d-%H%M%S")
        folder = run_grid(config, out, workers=args.workers)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    print((folder / "summary.md").read_text())
    print(f"results: {folder}")

