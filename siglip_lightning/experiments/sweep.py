"""A sweep: a grid of ordinary ``siglip-lightning fit`` runs, read from one YAML file.

A sweep config (``configs/experiments/*.yaml``) has:

- ``base``: the fit configs every cell starts from, in order (any recipe, data, strategy fragment);
- ``set``: ``dotted.key: value`` overrides for every cell;
- ``axes``: the grid. Each axis is one of
    * ``global_batch: [16, 64, ...]``: pairs per optimizer step over all devices; sets
      ``data.batch_size`` (per device), the step count and the learning rate below;
    * ``lr_base: [...]``: the ``lr.base`` of the scaling rule below;
    * ``dotted.key: [v1, v2]``: that config key takes each value;
    * ``name: {keys: [k1, k2], values: [v1, v2]}``: several keys take the same value (e.g. a seed);
    * ``name: {level: {dotted.key: value, ...}, ...}``: named levels, each a set of overrides;
- ``exclude``: a list of ``{axis: value or [values], ...}``; a cell matching every entry of one is dropped;
- ``examples``: examples seen per cell: ``trainer.max_steps = examples // global_batch``;
- ``lr``: ``{base, ref_batch, rule}``: ``model.lr = base * f(global_batch / ref_batch)`` with rule
  ``sqrt`` (Adam's square-root rule), ``linear`` or ``constant``;
- ``warmup_fraction``: ``model.warmup_steps = round(warmup_fraction * steps)``;
- ``prepare``: a stage that builds what the cells read, e.g. ``{siglit: {...}}`` (see ``siglit.py``);
- ``report``: ``x``, ``series``, ``panel``, ``logx``, ``chance``, ``paper`` (see ``report.py``);
- ``workers`` / ``threads``: cells run at once / torch threads each; ``checkpoint_every`` ("h:m:s");
- ``evaluate``: ``end`` (default: one validation, so one run of the eval callbacks, after the last
  step) or ``base`` (keep the base config's validation schedule);
- ``quick``: the same keys, replacing the above under ``--quick`` (a smoke-sized sweep).

A value that is a string starting with ``=`` is a formula of ``batch`` (global), ``steps`` and
``examples`` with ``log``, ``sqrt``, ``exp``, e.g. ``"=-log(batch)"`` (the sigmoid bias that makes
sigma(b) = 1/B, the share of positives in a batch).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from siglip_lightning.config_files import resolve
from siglip_lightning.errors import UserInputError

TOP_KEYS = {"name", "description", "base", "set", "axes", "exclude", "examples", "lr", "warmup_fraction", "prepare",
            "report", "workers", "threads", "checkpoint_every", "evaluate", "quick"}
LR_RULES = {"sqrt": math.sqrt, "linear": lambda r: r, "constant": lambda r: 1.0}
_FORMULA_NAMES = {"log": math.log, "sqrt": math.sqrt, "exp": math.exp, "min": min, "max": max, "round": round}


@dataclass
class Cell:
    """One run of the sweep: its axis values (for the report) and its config overrides."""

    name: str
    values: Dict[str, Any]
    overrides: Dict[str, Any]
    global_batch: Optional[int] = None
    steps: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        blob = json.dumps({"overrides": self.overrides, "extra": self.extra}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def load_sweep(path: os.PathLike, quick: bool = False, base: Optional[List[str]] = None) -> dict:
    """Read a sweep config; ``quick`` applies its ``quick`` part; ``base`` replaces its base configs."""
    path = Path(resolve(str(path)))
    if not path.is_file():
        raise UserInputError(f"sweep config not found: {path}")
    config = yaml.safe_load(path.read_text()) or {}
    unknown = set(config) - TOP_KEYS
    if unknown:
        raise UserInputError(f"{path}: unknown keys {sorted(unknown)}; a sweep config has {sorted(TOP_KEYS)}")
    quick_part = config.pop("quick", None) or {}
    if quick:
        bad = set(quick_part) - TOP_KEYS
        if bad:
            raise UserInputError(f"{path}: unknown keys under quick: {sorted(bad)}")
        config.update(copy.deepcopy(quick_part))
        config["quick"] = True
    if base:
        config["base"] = list(base)
        config.pop("prepare", None)  # the built-in preparation belongs to the built-in base config
    config.setdefault("name", path.stem)
    if not isinstance(config.get("axes"), dict) or not config["axes"]:
        raise UserInputError(f"{path}: 'axes' must map axis names to values")
    if not config.get("base"):
        raise UserInputError(f"{path}: give 'base': the fit config(s) every cell starts from")
    # `base: [configs/...]` names the packaged configs: found from any directory (a file here wins)
    config["base"] = [resolve(str(b)) for b in (config["base"] if isinstance(config["base"], list) else [config["base"]])]
    for b in config["base"]:
        if not Path(b).is_file():
            raise UserInputError(f"{path}: base config not found: {b}")
    return config


def merged_base(config: dict) -> dict:
    """The base configs merged (later wins), enough to read the device count."""
    out: dict = {}
    for file in config["base"]:
        out = deep_merge(out, yaml.safe_load(Path(file).read_text()) or {})
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def world_size(config: dict) -> int:
    """devices x num_nodes of the base configs (an explicit integer is needed to size the batch)."""
    trainer = merged_base(config).get("trainer", {}) or {}
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if isinstance(devices, list):
        devices = len(devices)
    if not isinstance(devices, int) or devices < 1 or not isinstance(nodes, int) or nodes < 1:
        raise UserInputError(f"the sweep needs trainer.devices and trainer.num_nodes as positive integers in the "
                             f"base config (got devices={devices!r}, num_nodes={nodes!r}) to turn global_batch "
                             "into data.batch_size")
    return devices * nodes


def _levels(name: str, spec: Any) -> List[tuple]:
    """``[(label, {key: value})]`` of one axis."""
    if name in ("global_batch", "lr_base"):
        if not isinstance(spec, list) or not all(isinstance(v, (int, float)) and v > 0 for v in spec):
            raise UserInputError(f"axis {name} must be a list of positive numbers, got {spec!r}")
        return [(v, {}) for v in spec]
    if isinstance(spec, list):
        return [(v, {name: v}) for v in spec]
    if isinstance(spec, dict) and set(spec) == {"keys", "values"}:
        return [(v, {k: v for k in spec["keys"]}) for v in spec["values"]]
    if isinstance(spec, dict) and all(isinstance(v, dict) for v in spec.values()):
        return [(label, dict(sets)) for label, sets in spec.items()]
    raise UserInputError(f"axis {name!r}: give a list of values, {{keys, values}}, or named levels "
                         f"{{level: {{key: value}}}}; got {spec!r}")


def _excluded(values: Dict[str, Any], rules: List[dict]) -> bool:
    for rule in rules or []:
        if all(values.get(k) in (v if isinstance(v, list) else [v]) for k, v in rule.items()):
            return True
    return False


def evaluate_formula(value: Any, names: Dict[str, Any]) -> Any:
    """``"=expr"`` -> the expression's value over ``names`` and a few math functions; others as is."""
    if isinstance(value, str) and value.startswith("="):
        try:
            return eval(value[1:], {"__builtins__": {}}, {**_FORMULA_NAMES, **names})  # noqa: S307 - own config
        except Exception as err:
            raise UserInputError(f"cannot evaluate the sweep formula {value!r} with {names}: {err}") from err
    if isinstance(value, dict):
        return {k: evaluate_formula(v, names) for k, v in value.items()}
    return value


def cell_name(values: Dict[str, Any]) -> str:
    text = "_".join(f"{k.split('.')[-1]}{v}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text)


def expand(config: dict) -> List[Cell]:
    """Every cell of the grid, with its overrides resolved (steps, lr, warmup, formulas)."""
    axes = config["axes"]
    world = world_size(config)
    names = list(axes)
    cells, seen = [], set()
    for combo in itertools.product(*(_levels(n, axes[n]) for n in names)):
        values = {n: label for n, (label, _) in zip(names, combo)}
        if _excluded(values, config.get("exclude")):
            continue
        overrides: Dict[str, Any] = dict(config.get("set") or {})
        for _, sets in combo:
            overrides.update(sets)
        batch = values.get("global_batch")
        steps = None
        context: Dict[str, Any] = {"examples": config.get("examples")}
        if batch is not None:
            if batch % world:
                raise UserInputError(f"global_batch {batch} is not divisible by the {world} devices")
            overrides["data.batch_size"] = batch // world
            context["batch"] = batch
            if config.get("examples"):
                steps = int(config["examples"]) // batch
                if steps < 1:
                    raise UserInputError(f"examples ({config['examples']}) is smaller than global_batch {batch}")
                overrides["trainer.max_steps"] = steps
                context["steps"] = steps
            lr = config.get("lr")
            if lr:
                rule = lr.get("rule", "sqrt")
                if rule not in LR_RULES:
                    raise UserInputError(f"lr.rule must be one of {sorted(LR_RULES)}, got {rule!r}")
                lr_base = values.get("lr_base", lr.get("base"))
                overrides["model.lr"] = float(lr_base) * LR_RULES[rule](batch / float(lr.get("ref_batch", batch)))
            if steps and config.get("warmup_fraction") is not None:
                overrides["model.warmup_steps"] = max(1, round(float(config["warmup_fraction"]) * steps))
        overrides = {k: evaluate_formula(v, context) for k, v in overrides.items()}
        cell = Cell(cell_name(values), values, overrides, batch, steps or overrides.get("trainer.max_steps"))
        if cell.name in seen:
            raise UserInputError(f"two cells are both named {cell.name!r}: give the axes distinct values")
        seen.add(cell.name)
        cells.append(cell)
    seed_axis = next((n for n in names if "seed" in n), None)
    # Seed by seed (an interrupted sweep still holds whole curves), the longest cells first within one.
    def order(cell: Cell) -> tuple:
        seed = cell.values.get(seed_axis, 0) if seed_axis else 0
        return (0, seed, "") if isinstance(seed, (int, float)) else (1, 0, str(seed)), -(cell.steps or 0)

    cells.sort(key=order)
    return cells


def nested(overrides: Dict[str, Any]) -> dict:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}`` (a YAML config layer that fit reads after the base)."""
    out: dict = {}
    for key, value in overrides.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserInputError(f"sweep key {key!r} conflicts with another key that sets {part!r}")
        node[parts[-1]] = value
    return out
