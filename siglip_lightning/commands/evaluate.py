"""``siglip-lightning evaluate``: zero-shot classification and retrieval of any model, over a suite of tasks.

    siglip-lightning evaluate --model runs/quickstart --suite configs/eval/builtin.yaml
    siglip-lightning evaluate --model /models/siglip-base-patch16-224 runs/ft/checkpoints/last.ckpt \\
        --suite configs/eval/published.yaml --data_root /data --out results/

No training data and no validation split are needed. Prints one table (a column per model) and,
with ``--out``, writes ``OUT/<model>/results.{json,csv,md}`` and ``OUT/comparison.{md,csv}`` over
every model evaluated into ``OUT`` so far. The tasks are measured by the evaluation callbacks' own
code (``EvalCallback.compute``). See docs/EVALUATION.md.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from siglip_lightning.errors import UserInputError

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


def precision_plugin(precision: str, device: str):
    """Lightning's precision plugin for ``precision`` (autocast for the mixed ones)."""
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision

    if precision not in PRECISIONS:
        raise UserInputError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "32-true":
        return Precision()
    return MixedPrecision(precision, "cuda" if device.startswith("cuda") else "cpu")


def model_label(path: str, taken: List[str]) -> str:
    """A folder name for the model's results: the folder's name (a checkpoint: its run folder + file stem)."""
    where = Path(path.removeprefix("local-dir:")).expanduser().resolve()
    if where.suffix == ".ckpt":
        run = where.parent.parent if where.parent.name == "checkpoints" else where.parent
        label = f"{run.name}-{where.stem}"
    else:
        label = where.name
    label = re.sub(r"[^A-Za-z0-9._=-]+", "_", label) or "model"
    unique, n = label, 2
    while unique in taken:
        unique, n = f"{label}-{n}", n + 1
    return unique


def builtin_source(datamodule, knobs: Optional[Dict]):
    """Where ``path: builtin`` tasks read the built-in sets: the suite's ``builtin`` knobs if set, else
    the run's own when it trained on them, else the default built-in data."""
    if knobs is None and getattr(datamodule, "path", None) == "builtin":
        return datamodule
    from siglip_lightning.data.datamodule import ImageTextDataModule
    from siglip_lightning.data.synthetic import ShapesSpec

    try:
        spec = ShapesSpec(**(knobs or {}))
    except TypeError as err:
        raise UserInputError(f"suite builtin: {err} (the keys are data.builtin's, see docs/DATA.md)") from err
    return ImageTextDataModule(path="builtin", builtin=spec, cache_dir=datamodule.hparams.cache_dir)


def evaluate_model(path: str, suite, device: str, precision: str, label: str) -> Dict:
    """One model over the suite: its results record (see ``eval/results.py``)."""
    from siglip_lightning.eval.base import eval_context
    from siglip_lightning.eval.models import load_model

    loaded = load_model(path)
    module = loaded.module.to(device).eval()
    plugin = precision_plugin(precision, device)
    builtin = builtin_source(loaded.datamodule, suite.builtin)
    tasks = {}
    for task in suite.tasks:
        context = eval_context(loaded.datamodule, plugin, task.patch_budget, f"task {task.name!r}")
        context.datamodule = builtin
        start = time.perf_counter()
        metrics = task.compute(module, context)
        tasks[task.name] = {"task": type(task).__name__, "metrics": {k: float(v) for k, v in metrics.items()},
                            "seconds": round(time.perf_counter() - start, 3)}
        print(f"{label} {task.name}: {task.summary(metrics)}", flush=True)
    return {"label": label, "model": str(path), "kind": loaded.kind, "checkpoint": loaded.checkpoint,
            "suite": suite.name, "precision": precision, "tasks": tasks}


def evaluate(model: List[str], suite: str, out: Optional[str] = None, data_root: Optional[str] = None,
             device: str = "auto", precision: str = "32-true") -> List[Dict]:
    """Evaluate each model over the suite; print the table, write the results under ``out``."""
    from siglip_lightning.eval.results import table, write_comparison, write_record
    from siglip_lightning.eval.suite import load_suite

    loaded_suite = load_suite(suite, data_root)  # a bad suite fails before any model is loaded
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    precision_plugin(precision, device)
    labels: List[str] = []
    if out is not None:
        labels += [p.parent.name for p in Path(out).glob("*/results.json")]
    records = []
    for path in model:
        label = model_label(path, labels)
        labels.append(label)
        records.append(evaluate_model(path, loaded_suite, device, precision, label))
        if out is not None:
            write_record(Path(out), records[-1])
    print()
    print(write_comparison(Path(out)) if out is not None else table(records), end="")
    return records


def main(argv: List[str]) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="siglip-lightning evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", required=True,
                        help="run folder or .ckpt, Hugging Face SiglipModel / Siglip2Model folder, or open_clip folder "
                             "(several: evaluated one after the other, compared in one table)")
    parser.add_argument("--suite", required=True, help="suite YAML (configs/eval/builtin.yaml, configs/eval/published.yaml)")
    parser.add_argument("--out", default=None, help="folder for results (one sub-folder per model + comparison.md)")
    parser.add_argument("--data_root", default=None, help="folder the suite's relative data paths start from")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    parser.add_argument("--precision", default="32-true", help=f"one of {PRECISIONS}")
    args = parser.parse_args(argv)
    evaluate(args.model, args.suite, args.out, args.data_root, args.device, args.precision)
