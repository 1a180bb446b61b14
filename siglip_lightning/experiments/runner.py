"""Run the cells of a sweep as ``siglip-lightning fit`` processes; skip finished cells, resume unfinished ones.

Layout of a sweep folder (``runs/<name>[_quick]`` by default; the same command restarts it)::

    sweep.yaml                 the sweep config as run (after --quick / --base)
    cells/<cell>/              an ordinary run folder: config.yaml (written by fit), metrics.csv,
                               tb/ (TensorBoard), checkpoints/last.ckpt, fit.log, and the runner's
                               sweep_cell.yaml (the cell's overrides), command.txt, result.json (done)
    results.csv, summary.md, summary.csv, plot.png   (report.py)
    timing.json

A cell is *finished* when its ``result.json`` exists (written after fit exited 0); a restart skips
it. An unfinished cell with ``checkpoints/last.ckpt`` is resumed with ``--ckpt_path`` (exact
mid-epoch resume of the datamodule and RNG state, docs/RESUMING.md). Any cell can be re-run by
hand with the command in its ``command.txt``.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

from siglip_lightning.errors import UserInputError
from siglip_lightning.experiments.metrics import final_metrics
from siglip_lightning.experiments.sweep import Cell, expand, nested

RESULT, STARTED = "result.json", "cell.json"


def fit_command() -> List[str]:
    """How this Python runs the CLI (the same package the sweep was started from)."""
    return [sys.executable, "-m", "siglip_lightning"]


def cell_layer(cell: Cell, folder: Path, evaluate_at_end: bool) -> dict:
    """The cell's config layer: axis overrides plus where its run folder, logs and evaluation go."""
    overrides = dict(cell.overrides)
    overrides["trainer.default_root_dir"] = str(folder)
    overrides["trainer.logger"] = [
        {"class_path": "lightning.pytorch.loggers.CSVLogger",
         "init_args": {"save_dir": str(folder), "name": "", "version": ""}},
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
         "init_args": {"save_dir": str(folder), "name": "tb", "version": ""}},
    ]
    overrides.setdefault("trainer.max_epochs", -1)
    if evaluate_at_end and cell.steps:
        # One evaluation (the eval callbacks run at the end of validation) after the last step.
        overrides["trainer.val_check_interval"] = cell.steps
        overrides["trainer.check_val_every_n_epoch"] = None
        overrides.setdefault("trainer.num_sanity_val_steps", 0)
    return nested(overrides)


def cell_command(base: Sequence[str], layer_file: Path, callbacks: Sequence[dict], resume: Optional[Path]) -> List[str]:
    args = ["fit"]
    for file in base:
        args += ["--config", str(file)]
    args += ["--config", str(layer_file)]
    for callback in callbacks:  # appended to the base configs' own callbacks
        args.append("--trainer.callbacks+=" + json.dumps(callback))
    if resume is not None:
        args += ["--ckpt_path", str(resume)]
    return args


class CellRun:
    """One running ``fit`` process."""

    def __init__(self, cell: Cell, folder: Path, args: List[str], env: Dict[str, str]) -> None:
        self.cell, self.folder, self.started, self.args, self.env = cell, folder, time.time(), args, env
        self.log = (folder / "fit.log").open("a")
        self.log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(args)}\n")
        self.log.flush()
        self.process = subprocess.Popen(fit_command() + args, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def poll(self) -> Optional[int]:
        code = self.process.poll()
        if code is not None:
            self.log.close()
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def evaluate_checkpoint(run: CellRun) -> None:
    """``siglip-lightning validate`` of a cell's ``last.ckpt`` with the cell's own configs (logs to its folder)."""
    with (run.folder / "fit.log").open("a") as log:
        args = ["validate", *run.args[1:]]
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(args)}\n")
        log.flush()
        subprocess.run(fit_command() + args, stdout=log, stderr=subprocess.STDOUT, env=run.env, check=False)


def cell_state(cell: Cell, folder: Path) -> str:
    """``done``, ``resume`` (a checkpoint exists), or ``new``; refuses a folder of another config."""
    for name in (RESULT, STARTED):
        path = folder / name
        if path.exists():
            recorded = json.loads(path.read_text()).get("fingerprint")
            if recorded != cell.fingerprint():
                raise UserInputError(
                    f"{folder} holds a run of another configuration of cell {cell.name!r} (the sweep config "
                    "changed since): give the sweep another --out, or delete that cell folder to re-run it")
    if (folder / RESULT).exists():
        return "done"
    return "resume" if (folder / "checkpoints" / "last.ckpt").exists() else "new"


def _env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = str(Path(__file__).resolve().parents[2])  # the package the runner runs, also in the children
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run_cells(config: dict, out: Path, prepared: Optional[dict] = None, workers: Optional[int] = None,
              progress: bool = True) -> List[dict]:
    """Run every unfinished cell (``workers`` at a time); return the finished cells' rows."""
    prepared = prepared or {}
    cells = expand(config)
    base = config["base"]
    workers = max(1, int(workers or config.get("workers", 1)))
    threads = max(1, int(config.get("threads", 1)))
    env = _env(threads)
    every = config.get("checkpoint_every", "0:05:00")
    callbacks = list(prepared.get("callbacks", [])) + [{
        # last.ckpt in <cell>/checkpoints every `every` of training: what a restart resumes from
        "class_path": "siglip_lightning.checkpointing.ResumableCheckpoint",
        "init_args": {"save_last": True, "save_top_k": 0, "train_time_interval": every}}]
    todo, rows, failed = [], [], []
    for cell in cells:
        cell.overrides = {**prepared.get("overrides", {}), **cell.overrides}
        cell.extra = {"base": base, "callbacks": callbacks[:-1]}
        folder = out / "cells" / cell.name
        state = cell_state(cell, folder)
        if state == "done":
            rows.append(json.loads((folder / RESULT).read_text())["row"])
        else:
            todo.append((cell, folder, state))
    say = print if progress else (lambda *a, **k: None)
    say(f"sweep {config.get('name')}: {len(cells)} cells, {len(rows)} finished before, {len(todo)} to run "
        f"({workers} at a time, {threads} thread(s) each) -> {out}", flush=True)
    running: List[CellRun] = []
    started = time.time()
    total_todo, done_steps = len(todo), 0

    def launch(cell: Cell, folder: Path, state: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        layer = folder / "sweep_cell.yaml"
        layer.write_text(yaml.safe_dump(cell_layer(cell, folder, config.get("evaluate", "end") == "end"),
                                        sort_keys=False))
        (folder / STARTED).write_text(json.dumps({"fingerprint": cell.fingerprint(), "values": cell.values}))
        resume = folder / "checkpoints" / "last.ckpt" if state == "resume" else None
        args = cell_command(base, layer, callbacks, resume)
        (folder / "command.txt").write_text("siglip-lightning " + shlex.join(args) + "\n")
        running.append(CellRun(cell, folder, args, env))
        say(f"  start  {cell.name} ({cell.steps} steps{', resuming from last.ckpt' if resume else ''})", flush=True)

    try:
        while todo or running:
            while todo and len(running) < workers:
                launch(*todo.pop(0))
            time.sleep(0.5)
            for run in list(running):
                code = run.poll()
                if code is None:
                    continue
                running.remove(run)
                seconds = time.time() - run.started
                if code != 0:
                    tail = (run.folder / "fit.log").read_text().splitlines()[-15:]
                    failed.append(run.cell.name)
                    say(f"  FAILED {run.cell.name} (exit {code}); the end of {run.folder / 'fit.log'}:\n    "
                        + "\n    ".join(tail), flush=True)
                    continue
                metrics = final_metrics(run.folder)
                if "--ckpt_path" in run.args and not any(k in metrics for k in ("r1_mean", "zeroshot_top1")):
                    # killed after its last checkpoint but before its evaluation: the resumed fit had no step
                    # left to run, so evaluate that checkpoint with the same configs
                    evaluate_checkpoint(run)
                    metrics = final_metrics(run.folder)
                row = {**run.cell.values, "cell": run.cell.name, "steps": run.cell.steps,
                       "lr": run.cell.overrides.get("model.lr"), **metrics,
                       "seconds": round(seconds, 1)}
                (run.folder / RESULT).write_text(json.dumps({"fingerprint": run.cell.fingerprint(), "row": row},
                                                            indent=1, default=str))
                rows.append(row)
                finished = total_todo - len(todo) - len(running)
                # by steps (a step's fixed cost dominates these small cells), not by cells
                done_steps += run.cell.steps or 1
                left = sum(c.steps or 1 for c, _, _ in todo) + sum((r.cell.steps or 1) / 2 for r in running)
                eta = (time.time() - started) / done_steps * left
                shown = ", ".join(f"{k} {row[k]:.1f}" for k in ("r1_mean", "zeroshot_top1") if k in row)
                say(f"  done   {run.cell.name} in {seconds:.0f} s: {shown}  [{finished}/{total_todo}, "
                    f"~{eta / 60:.0f} min left]", flush=True)
    except BaseException:
        for run in running:
            run.stop()
        raise
    if failed:
        say(f"{len(failed)} cell(s) failed: {failed}; run the same command again to retry them (their "
            "checkpoints are kept)", flush=True)
    return rows


def install_sigterm_handler() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so that running cells are stopped (and keep their checkpoints)."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)
