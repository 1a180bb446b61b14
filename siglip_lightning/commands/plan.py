"""``siglip-lightning plan``: a dry run of a config's training step, per device, before renting GPUs.

Takes the same config files and overrides as ``fit`` (``siglip-lightning plan --config
configs/siglip_b16.yaml --data.batch_size 512``) plus the ``--plan.*`` options below. Builds the model
on fake tensors (nothing of its size is allocated), traces one step (``siglip_lightning/plan/``) and
prints per device: parameters, optimizer state and strategy buffers, gradients, peak activations,
the loss's memory, the planned peak, FLOPs per step; and with a device (``--plan.device H100`` or
``--plan.device_peak_tflops`` + ``--plan.device_memory_gib``) the largest per-device batch that fits
and the step time at an assumed MFU. ``--plan.json`` prints the same as one JSON object.
"""
from __future__ import annotations

import json
import warnings
from typing import Any, Dict, List, Optional

import torch

from siglip_lightning.errors import UserInputError
from siglip_lightning.plan.devices import DEVICES, Device, device_named
from siglip_lightning.plan.planner import DevicePlan, flops_at, largest_batch, peak_at, plan_step
from siglip_lightning.plan.strategy import layout_of
from siglip_lightning.plan.trace import precision_name

GIB = 2**30


def _add_options(parser) -> None:
    parser.add_argument("--plan.device", type=Optional[str], default=None,
                        help=f"an accelerator of the table ({', '.join(DEVICES)}): its peak and memory")
    parser.add_argument("--plan.device_peak_tflops", type=Optional[float], default=None,
                        help="dense bf16 peak of the device in TFLOP/s (overrides --plan.device's)")
    parser.add_argument("--plan.device_memory_gib", type=Optional[float], default=None,
                        help="memory of the device in GiB (overrides --plan.device's)")
    parser.add_argument("--plan.mfu", type=float, default=0.4,
                        help="assumed model FLOPs utilisation for the step time")
    parser.add_argument("--plan.reserve_gib", type=float, default=2.0,
                        help="memory kept for what the plan does not trace: CUDA context, NCCL, allocator slack")
    parser.add_argument("--plan.json", type=bool, default=False, help="print one JSON object instead of the table")


def build_module(model_config: Any):
    """The configured SigLIPModule (on the default device: the planner builds it on ``meta``)."""
    from jsonargparse import ArgumentParser

    from siglip_lightning.model.module import SigLIPModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(SigLIPModule, "model", fail_untyped=False, sub_configs=True)
    model = model_config.as_dict() if hasattr(model_config, "as_dict") else model_config
    config = parser.parse_object({"model": model})
    return parser.instantiate(config).model


def _device(options: Any) -> Optional[Device]:
    base = device_named(options.device) if options.device else None
    peak = options.device_peak_tflops or (base.peak_tflops if base else None)
    memory = options.device_memory_gib * GIB if options.device_memory_gib else (base.memory_bytes if base else None)
    if peak is None and memory is None:
        return None
    return Device(base.name if base else "given", peak or 0.0, int(memory or 0))


def summarise(plan: DevicePlan, module, device: Optional[Device], mfu: float, reserve: float) -> Dict[str, Any]:
    """The plan as plain numbers (bytes, FLOPs, seconds)."""
    out: Dict[str, Any] = {
        "strategy": plan.layout.name, "precision": plan.precision, "rows_per_device": plan.rows,
        "global_batch": plan.rows * plan.layout.world, "loss": plan.loss_name, "loss_memory_from": plan.loss.how,
        **{k: v for k, v in plan.resident.items()}, "batches held": plan.batches, "gradients": plan.gradients,
        "activations (peak)": plan.activations, "loss memory": plan.loss.bytes, "planned peak": plan.peak,
        "flops_per_step": plan.flops,
    }
    objectives = [type(o).__name__ for o in getattr(module, "objectives", None) or []]
    if objectives:
        # the traced step is compute_loss (the contrastive loss); an objective's forward draws tasks, crops
        # and masks that fake tensors cannot decide, so only its parameters and optimizer state are planned
        out["not_planned"] = (f"activations and FLOPs of model.objectives ({', '.join(objectives)}): their "
                              "parameters, optimizer state and the EMA teacher are counted, their forward is not")
    if device is not None:
        if device.memory_bytes:
            budget = device.memory_bytes - reserve * GIB
            out["largest_rows_per_device"] = largest_batch(lambda rows: peak_at(plan, module, rows) <= budget)
        if device.peak_tflops:
            rate = device.peak_tflops * 1e12 * mfu
            out["step_seconds"] = plan.flops / rate
            out["samples_per_second_per_device"] = plan.rows / out["step_seconds"]
            best = out.get("largest_rows_per_device")
            if best:
                out["step_seconds_at_largest"] = flops_at(plan, module, best) / rate
        out.update(device=device.name, device_peak_tflops=device.peak_tflops,
                   device_memory_gib=device.memory_bytes / GIB, mfu=mfu, reserve_gib=reserve)
    return out


def _table(summary: Dict[str, Any]) -> str:
    memory = ["parameters", "optimizer state", "DDP buckets", "FSDP gathered", "batches held", "gradients",
              "activations (peak)", "loss memory", "planned peak"]
    lines = [f"per device: {summary['rows_per_device']} pairs (global batch {summary['global_batch']}), "
             f"{summary['strategy']}, {summary['precision']}, {summary['loss']} (loss memory "
             f"{summary['loss_memory_from']})", "", "| per device | MiB |", "|---|---|"]
    lines += [f"| {key} | {summary[key] / 2**20:.1f} |" for key in memory if key in summary]
    lines.append(f"| FLOPs per step (forward + backward) | {summary['flops_per_step']:.4g} |")
    if "not_planned" in summary:
        lines += ["", f"not planned: {summary['not_planned']}"]
    if "device" in summary:
        lines += ["", f"on {summary['device']} ({summary['device_peak_tflops']:g} TFLOP/s, "
                      f"{summary['device_memory_gib']:.1f} GiB, {summary['reserve_gib']:g} GiB kept back), "
                      f"MFU {summary['mfu']:g}:"]
        for key, label in [("largest_rows_per_device", "largest per-device batch that fits"),
                           ("step_seconds", "step time at this batch (s)"),
                           ("samples_per_second_per_device", "samples/s per device"),
                           ("step_seconds_at_largest", "step time at the largest batch (s)")]:
            if key in summary:
                value = summary[key]
                lines.append(f"| {label} | {value:.4g} |" if isinstance(value, float) else f"| {label} | {value} |")
    return "\n".join(lines)


def parse(argv: List[str]) -> Any:
    """``argv`` parsed as ``fit`` parses it, plus the ``--plan.*`` options; nothing is built."""
    from siglip_lightning.cli import SigLIPCLI

    class PlanCLI(SigLIPCLI):
        def add_arguments_to_parser(self, parser) -> None:
            super().add_arguments_to_parser(parser)
            _add_options(parser)

        def instantiate_classes(self) -> None:  # nothing real is built
            pass

    with warnings.catch_warnings():  # LightningCLI warns when args are given while sys.argv has some too
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        config = PlanCLI(args=argv, run=False, parser_kwargs={"prog": "siglip-lightning plan"}).config
    if not 0 < config.plan.mfu <= 1:
        raise UserInputError(f"--plan.mfu must be in (0, 1], got {config.plan.mfu}")
    return config


def plan_parsed(config: Any):
    """``(DevicePlan, module)`` of a parsed config; the module is built on fake tensors."""
    from siglip_lightning import _compat

    data = config.data.as_dict() if hasattr(config.data, "as_dict") else dict(config.data)
    rows = data.get("batch_size")
    if not rows or rows < 1:
        raise UserInputError(f"data.batch_size must be a positive number of pairs to plan, got {rows}")
    with torch.device("meta"), warnings.catch_warnings():  # no memory behind it (a folder's file is still read)
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        module = build_module(config.model)
    with _compat.fake_tensor_mode():
        module.to_empty(device="cpu")  # fake CPU tensors: the CPU kernels' shapes and choices, as on a GPU
    plan = plan_step(module, rows, data, precision_name(config.trainer.precision), layout_of(config.trainer),
                     module.hparams.get("micro_batch_size"))
    return plan, module


def plan_config(argv: List[str]) -> Dict[str, Any]:
    """Parse ``argv`` as ``fit`` does (plus ``--plan.*``), plan it, return the summary."""
    config = parse(argv)
    plan, module = plan_parsed(config)
    options = config.plan
    return summarise(plan, module, _device(options), options.mfu, options.reserve_gib) | {"json": options.json}


def main(argv: Optional[List[str]] = None) -> None:
    summary = plan_config(list(argv or []))
    as_json = summary.pop("json")
    print(json.dumps(summary, indent=1) if as_json else _table(summary))
