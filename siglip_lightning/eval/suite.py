"""A suite YAML: the evaluation tasks ``siglip-lightning evaluate`` runs, each one of the callbacks.

    data_root: data      # optional: where relative task paths start (--data_root overrides)
    builtin: {num_validation: 500}   # optional: knobs of the built-in sets (default: the run's own)
    defaults:            # optional: keys given to every task (a task's own keys win)
      batch_size: 256
    tasks:
      - name: imagenet
        task: zeroshot   # ZeroShotClassification; its init_args follow
        path: data/imagenet/val
        class_names: imagenet
        templates: openai
      - name: coco
        task: retrieval  # Retrieval
        path: data/coco/dataset_coco.json
        image_root: data/coco

A task's keys are the init_args of its callback (``ZeroShotClassification`` / ``Retrieval``, see
docs/EVALUATION.md) except the in-training ones (``every_n_steps``, ``at_validation``), so the suite
and a ``fit`` config describe a task the same way and the same code measures it.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from siglip_lightning.errors import UserInputError
from siglip_lightning.eval.base import EvalCallback
from siglip_lightning.eval.retrieval import Retrieval
from siglip_lightning.eval.zeroshot import ZeroShotClassification

TASKS = {"zeroshot": ZeroShotClassification, "zeroshot_classification": ZeroShotClassification,
         "retrieval": Retrieval}
IN_TRAINING_ONLY = ("every_n_steps", "at_validation")
PATH_KEYS = ("path", "image_root")


@dataclass
class Suite:
    name: str
    tasks: List[EvalCallback]
    builtin: Optional[Dict[str, Any]] = None  # knobs of the built-in sets (data.builtin.*), if set


def _local_path(value: str, data_root: Optional[Path]) -> Optional[Path]:
    """``value`` as a local path when it is meant as one (not ``builtin``, a Hub name or a remote/glob pattern)."""
    if value == "builtin" or "://" in value or any(c in value for c in "*?[{"):
        return None
    path = Path(value).expanduser()
    if data_root is not None and not path.is_absolute():
        return data_root / path
    looks_local = path.is_absolute() or value.startswith((".", "~")) or value.count("/") != 1 or path.suffix
    return path if looks_local or path.exists() else None


def _task(entry: Any, defaults: Dict[str, Any], data_root: Optional[Path], where: str) -> EvalCallback:
    if not isinstance(entry, dict) or "name" not in entry or "task" not in entry:
        raise UserInputError(f"{where}: each task needs a name and a task ({' or '.join(TASKS)}), got {entry!r:.120}")
    name, kind = str(entry["name"]), str(entry["task"])
    if kind not in TASKS:
        raise UserInputError(f"{where}, task {name!r}: unknown task {kind!r} (known: {', '.join(TASKS)})")
    cls = TASKS[kind]
    known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *IN_TRAINING_ONLY)]
    args = {**defaults, **{k: v for k, v in entry.items() if k != "task"}}
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise UserInputError(f"{where}, task {name!r}: unknown key(s) {unknown} for {kind} (known: {known})")
    for key in PATH_KEYS:
        if isinstance(args.get(key), str):
            local = _local_path(args[key], data_root)
            if local is not None and not local.exists():
                raise UserInputError(f"{where}, task {name!r}: {key} not found: {local} (the layout it expects is "
                                     "in the suite's header and docs/EVALUATION.md)")
            if local is not None:
                args[key] = str(local)
    return cls(**args, at_validation=False)


def load_suite(path: str, data_root: Optional[str] = None) -> Suite:
    """The tasks of the suite file ``path``; relative data paths are taken from ``data_root`` when given."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserInputError(f"--suite {path}: file not found")
    try:
        spec = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserInputError(f"--suite {path}: not valid YAML: {str(err).splitlines()[0]}") from err
    where = f"suite {path}"
    if not isinstance(spec, dict) or not isinstance(spec.get("tasks"), list) or not spec["tasks"]:
        raise UserInputError(f"{where}: expected a mapping with a non-empty 'tasks' list")
    unknown = sorted(set(spec) - {"tasks", "defaults", "name", "builtin", "data_root"})
    if unknown:
        raise UserInputError(f"{where}: unknown top-level key(s) {unknown} (known: name, data_root, builtin, "
                             "defaults, tasks)")
    data_root = data_root or spec.get("data_root")
    root = Path(os.path.expanduser(data_root)) if data_root else None
    tasks = [_task(entry, spec.get("defaults") or {}, root, where) for entry in spec["tasks"]]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise UserInputError(f"{where}: task names must be unique, got {names}")
    return Suite(str(spec.get("name") or file.stem), tasks, spec.get("builtin"))
