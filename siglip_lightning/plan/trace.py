"""One training step of a module on fake tensors: live bytes op by op, FLOPs, and the resident sizes.

The step is the one ``SigLIPModule.training_step`` and Lightning's automatic optimization run, in
their order: forward (under autocast for ``*-mixed`` precision; the previous step's gradients are
still alive, Lightning zeroes them between ``training_step`` and backward), backward, the AdamW
step. With ``model.micro_batch_size`` it is the gradient-caching step (``model/gradcache.py``), which
zeroes the gradients first. The module's loss is swapped for a stand-in with the same inputs and
outputs and next to no memory: it marks where the loss runs, and the loss's own cost is added from
``loss_cost.py`` (its machinery on several devices cannot run in one process). An optimizer step on a
step's worth of gradients creates the optimizer state, which is counted from its sizes, not traced.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from siglip_lightning.errors import UserInputError
from siglip_lightning.model.gradcache import cached_gradient_loss, wants_micro_batches
from siglip_lightning.plan.flops import flop_counter
from siglip_lightning.plan.inputs import batch_bytes, make_batch
from siglip_lightning.plan.tracker import LiveBytes

MIXED = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
TRUE = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "32-true": torch.float32, "64-true": torch.float64}
ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}


def precision_name(precision: Any) -> str:
    """Lightning's precision setting as one of the names above (``None``: 32-true)."""
    name = ALIASES.get(str(precision), str(precision)) if precision is not None else "32-true"
    if name not in MIXED and name not in TRUE:
        raise UserInputError(f"the planner does not know trainer.precision={precision!r}; it plans "
                             f"{', '.join(list(MIXED) + list(TRUE))}")
    return name


@dataclass
class StepTrace:
    """What one traced step of ``rows`` pairs per device left behind."""

    rows: int
    timeline: List[Tuple[str, int, int]]  # (phase, other bytes, gradient bytes) after every op
    loss_at: int  # timeline index where the loss starts
    flops: int  # towers, forward + backward (+ the extra forward of gradient caching); loss excluded
    feature_width: int
    feature_dtype: torch.dtype
    autocast_dtype: Optional[torch.dtype]
    param_bytes: int
    trainable_bytes: int
    optimizer_bytes: int
    batch_bytes: int
    block_bytes: List[int] = field(default_factory=list)  # each transformer block's parameters


class _StandInLoss(nn.Module):
    """Takes what a contrastive loss takes and returns a scalar that depends on all of it, holding almost
    nothing: the features' gradients that backward produces are the real loss's."""

    def __init__(self, tracker: Optional[LiveBytes]) -> None:
        super().__init__()
        self.tracker, self.seen = tracker, None

    def forward(self, image_features, text_features, logit_scale, logit_bias=None):
        if self.tracker is not None:
            self.tracker.mark("loss")
        self.seen = (image_features.shape[-1], image_features.dtype)
        out = (image_features * text_features).sum() * logit_scale
        return out + logit_bias if logit_bias is not None else out


@contextlib.contextmanager
def _loss_swapped(module: nn.Module, stand_in: nn.Module):
    real = module.loss
    module.loss = stand_in
    try:
        yield
    finally:
        module.loss = real


def _step(module, optimizer, batch, autocast, micro, tracker: Optional[LiveBytes]) -> None:
    phase = tracker.set_phase if tracker is not None else (lambda name: None)
    rows = batch["text"].shape[0]
    cached = wants_micro_batches(module, rows, micro)
    if cached:  # training_step zeroes the gradients before gradient caching fills them
        optimizer.zero_grad(set_to_none=True)
    phase("forward" if cached else "forward, last step's gradients alive")
    with autocast():
        if cached:
            _, loss = cached_gradient_loss(module, batch["image"], batch["text"], micro)
        else:
            loss = module.compute_loss(batch)
    if not cached:  # Lightning: zero_grad between training_step and backward
        optimizer.zero_grad(set_to_none=True)
    phase("backward")
    loss.backward()
    del loss
    phase("optimizer")
    optimizer.step()


def _blocks(module: nn.Module) -> List[int]:
    from open_clip.transformer import ResidualAttentionBlock

    return [sum(p.numel() * p.element_size() for p in m.parameters()) for m in module.modules()
            if isinstance(m, ResidualAttentionBlock)]


def _convert(module: nn.Module, dtype: torch.dtype) -> None:
    """What ``SigLIPModule.to(dtype)`` does under ``*-true`` precision (t', b and norms stay float32,
    ``model/precision.py``), written for fake parameters, which ``Module.to`` cannot swap."""
    from siglip_lightning.model.precision import float32_parameters

    keep = {id(p) for p in float32_parameters(module).values()}
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point() and tensor.dtype != dtype and id(tensor) not in keep:
            tensor.data = tensor.data.to(dtype)


def _make_optimizer(module: nn.Module) -> torch.optim.Optimizer:
    """The module's AdamW with its state already made (as after a first step), counted from its sizes."""
    optimizer = torch.optim.AdamW(module.parameter_groups(), lr=1e-3, fused=module.use_fused_optimizer())
    for param in module.parameters():
        if param.requires_grad:
            param.grad = torch.zeros_like(param)
    optimizer.step()
    return optimizer


def trace_steps(module: nn.Module, sizes: List[int], data: Dict[str, Any], precision: str,
                micro_batch_size: Optional[int]) -> Dict[int, StepTrace]:
    """Run the step of ``module`` (built inside the planner's fake mode, still in it) at each number of
    pairs in ``sizes``; the previous step's gradients are alive when each starts, as in training."""
    autocast_dtype = MIXED.get(precision)
    if precision in TRUE:
        _convert(module, TRUE[precision])
    autocast = ((lambda: torch.autocast("cpu", dtype=autocast_dtype)) if autocast_dtype is not None
                else contextlib.nullcontext)
    image_dtype = TRUE.get(precision, torch.float32)
    module.train()
    optimizer = _make_optimizer(module)
    params = list(module.parameters())
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    traces = {}
    for rows in sizes:
        batch = make_batch(module, rows, data, image_dtype)
        tracker = LiveBytes()
        stand_in = _StandInLoss(tracker)
        hooks = tracker.watch_gradients(params)
        try:
            with _loss_swapped(module, stand_in), flop_counter() as counter, tracker:
                _step(module, optimizer, batch, autocast, micro_batch_size, tracker)
        finally:
            for hook in hooks:
                hook.remove()
        width, dtype = stand_in.seen
        traces[rows] = StepTrace(
            rows=rows, timeline=tracker.timeline, loss_at=tracker.marks["loss"], flops=counter.get_total_flops(),
            feature_width=width, feature_dtype=dtype, autocast_dtype=autocast_dtype,
            param_bytes=sum(p.numel() * p.element_size() for p in params),
            trainable_bytes=sum(p.numel() * p.element_size() for p in params if p.requires_grad),
            optimizer_bytes=sum(t.numel() * t.element_size() for t in state),
            batch_bytes=batch_bytes(batch), block_bytes=_blocks(module))
    return traces
