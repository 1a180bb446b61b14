"""Skip optimizer steps whose loss or gradients are not finite; stop after too many in a row.

A skipped step leaves the parameters and the optimizer's moments untouched (every gradient is
set to ``None``, and torch's optimizers skip parameters without a gradient); the batch is used up
and ``global_step`` and the learning-rate schedule still advance, as for any other step. Under
DDP/FSDP the decision is all-reduced, so every rank skips the same steps and none falls out of
step with the others.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Dict, List

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import MixedPrecision

from siglip_lightning import _compat
from siglip_lightning.errors import TrainingAbortedError

log = logging.getLogger("siglip_lightning.checkpointing")


class NonFiniteError(TrainingAbortedError):
    """Too many consecutive optimizer steps with a non-finite loss or gradient."""


def parameter_groups(module: torch.nn.Module) -> "OrderedDict[str, List[torch.nn.Parameter]]":
    """Trainable parameters grouped by their top-level submodule (``image_tower``, ``text_tower``,
    ``logit_scale``, ...), in a fixed order so that every rank builds the same flag vector."""
    groups: "OrderedDict[str, List[torch.nn.Parameter]]" = OrderedDict()
    for name, param in module.named_parameters():
        if param.requires_grad:
            groups.setdefault(name.split(".")[0], []).append(param)
    return groups


def nonfinite_grad_flags(groups: Dict[str, List[torch.nn.Parameter]], device: torch.device) -> torch.Tensor:
    """One float per group: 1.0 if any gradient in it has a NaN or an inf (no host sync here)."""
    flags = []
    for params in groups.values():
        # Sharded (FSDP2 DTensor) gradients: check this rank's shard; the flags are then combined
        # across ranks, so every shard is covered and no collective runs on a DTensor.
        grads = [getattr(p.grad, "to_local", lambda g=p.grad: g)() for p in params if p.grad is not None]
        if not grads:
            flags.append(torch.zeros((), device=device))
            continue
        # The norm of the per-tensor norms is inf/nan iff some element is: one reduction per group.
        norms = _compat.foreach_norm(grads)
        total = torch.stack([n.float().to(device) for n in norms]).sum()
        flags.append((~torch.isfinite(total)).float())
    return torch.stack(flags) if flags else torch.zeros(0, device=device)


class NonFiniteGuard(Callback):
    """Skips (and counts) optimizer steps with a non-finite loss or gradient; stops the run after
    ``max_consecutive`` of them in a row. Logs ``train/skipped_nonfinite`` (total so far) and warns
    with the step and the parts of the model (``image_tower``, ``text_tower``, ``logit_scale``, ...)
    whose gradients were not finite.

    With ``16-mixed`` precision the gradient scaler already skips steps whose gradients overflow
    (that is how it calibrates its scale), so only the loss is checked there.

    Args:
        max_consecutive: stop with an error after this many consecutive skipped steps (0: never stop).
        check_gradients: also check the gradients, not only the loss.
    """

    def __init__(self, max_consecutive: int = 10, check_gradients: bool = True) -> None:
        if max_consecutive < 0:
            raise ValueError(f"max_consecutive must be >= 0, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.check_gradients = check_gradients
        self.total_skipped = 0
        self.consecutive = 0
        self._loss_bad: Any = None  # tensor flag, accumulated over micro-batches
        self._logged_once = False

    # --- state, so that the counts survive a resume -----------------------------------------------
    def state_dict(self) -> Dict[str, int]:
        return {"total_skipped": self.total_skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: Dict[str, int]) -> None:
        self.total_skipped = int(state_dict.get("total_skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))

    # --- hooks -------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._logged_once = False

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        bad = (~torch.isfinite(loss.detach())).any()
        self._loss_bad = bad if self._loss_bad is None else (self._loss_bad | bad)

    def _scaler_in_use(self, trainer) -> bool:
        plugin = trainer.precision_plugin
        return isinstance(plugin, MixedPrecision) and getattr(plugin, "scaler", None) is not None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        device = pl_module.device
        loss_bad = self._loss_bad if self._loss_bad is not None else torch.zeros((), dtype=torch.bool)
        self._loss_bad = None
        groups = parameter_groups(pl_module)
        if self.check_gradients and not self._scaler_in_use(trainer):
            grad_flags = nonfinite_grad_flags(groups, device)
        else:
            grad_flags = torch.zeros(len(groups), device=device)
        flags = torch.cat([loss_bad.float().reshape(1).to(device), grad_flags])
        if trainer.world_size > 1:
            # every rank must take the same decision, or DDP's next all-reduce pairs up wrong steps
            flags = trainer.strategy.reduce(flags, reduce_op="sum")
        flags = flags.tolist()  # the one host sync of this callback per optimizer step
        bad_groups = [name for name, flag in zip(groups, flags[1:]) if flag > 0]
        if flags[0] > 0 or bad_groups:
            self._skip(trainer, pl_module, loss_bad=flags[0] > 0, bad_groups=bad_groups)
            skipped_now = True
        else:
            self.consecutive = 0
            skipped_now = False
        # A running total: logged when it changes, on the first step and on the steps the logger writes.
        # Every step would cost a self.log (~0.5 ms, 10% of a small CPU model's step).
        if skipped_now or not self._logged_once or _compat.logs_this_step(trainer):
            self._logged_once = True
            pl_module.log("train/skipped_nonfinite", float(self.total_skipped), on_step=True, on_epoch=False,
                          reduce_fx="max", sync_dist=False)

    def _skip(self, trainer, pl_module, loss_bad: bool, bad_groups: List[str]) -> None:
        for param in pl_module.parameters():
            param.grad = None
        self.total_skipped += 1
        self.consecutive += 1
        what = []
        if loss_bad:
            what.append("loss")
        if bad_groups:
            what.append("gradients of " + ", ".join(bad_groups))
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx})"
        message = (f"non-finite {' and '.join(what)} at {where}: optimizer step skipped "
                   f"({self.consecutive} in a row, {self.total_skipped} in all)")
        if trainer.is_global_zero:
            log.warning(message)
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"stopping: {self.consecutive} consecutive optimizer steps had a non-finite loss or gradient "
                f"(last: {message}). Lower model.lr, check the data, or raise nonfinite.max_consecutive "
                f"(now {self.max_consecutive})."
            )
