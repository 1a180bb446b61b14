"""Per-device memory and FLOPs of a configured training step, and the largest batch a device takes.

``plan_step`` traces the step at the configured per-device batch b and at b/2 (``trace.py``), weighs
the traced gradients by the strategy (``strategy.py``), adds the loss's own cost at the point where
the loss runs (``loss_cost.py``), and adds what stays resident (parameters, optimizer state, DDP
buckets or FSDP's gathered blocks, the batch and the one the loader has ready). Activations grow
linearly with the batch, the loss up to quadratically: the two traces give the line, the loss's cost
is recomputed at each candidate size, and the largest batch under a device's memory is found by
bisection. Not planned: the CUDA context and NCCL buffers (``reserve``), allocator fragmentation,
``torch.compile`` (plans the eager step).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from torch import nn

from siglip_lightning import _compat
from siglip_lightning.plan.loss_cost import LossCost, loss_cost
from siglip_lightning.plan.strategy import Layout, gradient_share, resident_bytes
from siglip_lightning.plan.trace import StepTrace, trace_steps

#: a step's batch and the next one, which the loader has ready
BATCHES_HELD = 2


@dataclass
class DevicePlan:
    rows: int
    layout: Layout
    precision: str
    resident: Dict[str, int]
    batches: int
    activations: int  # peak of activations and temporaries alone
    gradients: int  # this device's gradients, when all exist
    loss: LossCost
    peak: int
    flops: int
    loss_name: str
    fit: Dict[str, Any] = field(default_factory=dict)  # how peak and FLOPs grow with the batch


def _weighed(trace: StepTrace, layout: Layout) -> tuple:
    """(peak of the step without the loss, bytes live when the loss starts), gradients weighed by the layout."""
    share = gradient_share(layout)
    old = trace.trainable_bytes * share  # the previous step's gradients, until Lightning zeroes them
    weigh = lambda phase, other, grads: other + grads * share + (old if phase.endswith("alive") else 0)  # noqa: E731
    peak = max(weigh(*entry) for entry in trace.timeline)
    return peak, weigh(*trace.timeline[trace.loss_at])


def _loss(module: nn.Module, trace: StepTrace, rows: int, layout: Layout) -> LossCost:
    return loss_cost(module.loss, rows, layout.world, trace.feature_width, trace.feature_dtype,
                     trace.autocast_dtype, module.logit_bias is not None)


def plan_step(module: nn.Module, rows: int, data: Dict[str, Any], precision: str, layout: Layout,
              micro_batch_size: Optional[int] = None) -> DevicePlan:
    """Plan ``module`` (built inside ``_compat.fake_tensor_mode()``) at ``rows`` pairs per device."""
    sizes = sorted({rows, max(1, rows // 2)}) if rows > 1 else [1, 2]
    with _compat.fake_tensor_mode():
        traces = trace_steps(module, sizes, data, precision, micro_batch_size)
    main = traces[rows]
    resident = resident_bytes(layout, main.param_bytes, main.trainable_bytes, main.optimizer_bytes,
                              main.block_bytes)
    (r0, t0), (r1, t1) = sorted(traces.items())
    step0, at_loss0 = _weighed(t0, layout)
    step1, at_loss1 = _weighed(t1, layout)
    slope = lambda a, b: (b - a) / (r1 - r0)  # noqa: E731
    fit = {"resident": sum(resident.values()), "batch_per_row": t1.batch_bytes / r1,
           "step": (step0, slope(step0, step1), r0), "at_loss": (at_loss0, slope(at_loss0, at_loss1), r0),
           "flops": (t0.flops, slope(t0.flops, t1.flops), r0),
           "features": (main.feature_width, main.feature_dtype, main.autocast_dtype)}
    loss = _loss(module, main, rows, layout)
    step, at_loss = _weighed(main, layout)
    peak = sum(resident.values()) + BATCHES_HELD * main.batch_bytes + max(step, at_loss + loss.bytes)
    activations = max(other for _, other, _ in main.timeline)
    return DevicePlan(rows=rows, layout=layout, precision=precision, resident=resident,
                      batches=BATCHES_HELD * main.batch_bytes, activations=activations,
                      gradients=int(main.trainable_bytes * gradient_share(layout)), loss=loss, peak=int(peak),
                      flops=main.flops + loss.flops, loss_name=type(module.loss).__name__, fit=fit)


def _line(fit: tuple, rows: int) -> float:
    start, slope, at = fit
    return start + slope * (rows - at)


def peak_at(plan: DevicePlan, module: nn.Module, rows: int) -> float:
    """Planned peak bytes per device at another batch size (the traces' line plus the loss at that size)."""
    fit = plan.fit
    loss = _loss_at(plan, module, rows)
    dynamic = max(_line(fit["step"], rows), _line(fit["at_loss"], rows) + loss.bytes)
    return fit["resident"] + BATCHES_HELD * fit["batch_per_row"] * rows + dynamic


def flops_at(plan: DevicePlan, module: nn.Module, rows: int) -> float:
    return _line(plan.fit["flops"], rows) + _loss_at(plan, module, rows).flops


def _loss_at(plan: DevicePlan, module: nn.Module, rows: int) -> LossCost:
    width, dtype, autocast = plan.fit["features"]
    return loss_cost(module.loss, rows, plan.layout.world, width, dtype, autocast, module.logit_bias is not None)


def largest_batch(fits: Callable[[int], bool], limit: int = 1 << 22) -> int:
    """The largest batch ``fits`` accepts (0 if not even one pair), assuming more rows never need less."""
    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    if high > limit:
        return low
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low
