"""Fire drills: callbacks that break a run on purpose, and one that records what each step saw.

They exist to test (and let users rehearse) the fault tolerance of a real run from the CLI, e.g.
``--trainer.callbacks+=tests.helpers.drills.KillAtStep --trainer.callbacks.step=5``.
Never leave them in a production config.
"""
from __future__ import annotations

import io
import json
import os
import random
import signal
import sys
import time
from typing import Any, List, Optional

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from siglip_lightning.checkpointing import atomic


def _applies(trainer, rank: Optional[int]) -> bool:
    return rank is None or trainer.global_rank == rank


class KillAtStep(Callback):
    """Ends the process abruptly when a training batch starts at ``global_step == step``.

    Args:
        step: the optimizer step count at which to act (checkpoints of that step are already written).
        mode: ``sigkill`` (like a preemption or the OOM killer), ``exit`` (``os._exit(exit_code)``,
            no clean-up) or ``hang`` (sleep forever, like a stuck rank).
        rank: only this global rank acts (``None``: all).
        exit_code: the exit status in ``exit`` mode.
    """

    def __init__(self, step: int, mode: str = "sigkill", rank: Optional[int] = None, exit_code: int = 1) -> None:
        if mode not in ("sigkill", "exit", "hang"):
            raise ValueError(f"mode must be sigkill, exit or hang, got {mode!r}")
        self.step, self.mode, self.rank, self.exit_code = step, mode, rank, exit_code

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self.step or not _applies(trainer, self.rank):
            return
        # the wall-clock time lets a test measure how long the other ranks take to give up
        print(f"KillAtStep: rank {trainer.global_rank} does {self.mode} at step {self.step}, t={time.time():.3f}",
              file=sys.stderr, flush=True)
        if self.mode == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.mode == "exit":
            os._exit(self.exit_code)
        while True:  # hang
            time.sleep(3600)


class KillDuringCheckpoint(Callback):
    """SIGKILLs the process halfway through writing the checkpoint of step ``step``.

    Args:
        step: the optimizer step whose checkpoint write is cut short.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Checkpoint callbacks run after all others, so the next save in this hook is the one to break.
        if trainer.global_step == self.step and trainer.is_global_zero:
            atomic._dump = _dump_half_then_die


def _dump_half_then_die(obj: Any, fileobj) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    fileobj.write(data[: len(data) // 2])
    fileobj.flush()
    os.fsync(fileobj.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


class InjectNonFinite(Callback):
    """Makes the loss or some gradients non-finite at chosen optimizer steps.

    Args:
        steps: ``global_step`` values at which to inject.
        target: ``loss`` (the batch's images become NaN, so the loss and every gradient do) or the
            name of a top-level part of the model (``image_tower``, ``text_tower``, ``logit_scale``)
            whose first gradient gets the value.
        value: ``nan`` or ``inf``.
        rank: only this global rank injects (``None``: all).
    """

    def __init__(self, steps: List[int], target: str = "loss", value: str = "nan", rank: Optional[int] = None) -> None:
        self.steps = set(int(s) for s in steps)
        self.target = target
        self.value = float(value)
        self.rank = rank

    def _now(self, trainer) -> bool:
        return trainer.global_step in self.steps and _applies(trainer, self.rank)

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        if self.target == "loss" and self._now(trainer):
            batch["image"].fill_(self.value)

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.target == "loss" or not self._now(trainer):
            return
        params = [p for n, p in pl_module.named_parameters() if n.split(".")[0] == self.target and p.grad is not None]
        if not params:
            raise ValueError(f"InjectNonFinite: no gradient under {self.target!r}")
        params[0].grad.view(-1)[0] = self.value


class StepRecorder(Callback):
    """Appends one JSON line per training batch: step, loss, lr, skipped steps, sample ids, RNG draws.

    A resumed run appends to the same file, so the file shows what each step saw across restarts.

    Args:
        path: the JSONL file (one per rank: ``.rank{N}`` is added for ranks > 0).
        draw_rng: also draw one number from torch, numpy and python ``random`` per step, to check
            that a resumed run continues the same random streams.
    """

    def __init__(self, path: str, draw_rng: bool = False) -> None:
        self.path = path
        self.draw_rng = draw_rng

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "loss": float(loss.detach()) if loss is not None else None,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
        }
        skipped = trainer.callback_metrics.get("train/skipped_nonfinite")
        if skipped is not None:
            record["skipped_nonfinite"] = int(skipped)
        if isinstance(batch, dict) and "id" in batch:
            ids = batch["id"]
            record["ids"] = ids.tolist() if torch.is_tensor(ids) else list(ids)
        if self.draw_rng:
            record["rng"] = [torch.rand(()).item(), float(np.random.rand()), random.random()]
        path = self.path if trainer.global_rank == 0 else f"{self.path}.rank{trainer.global_rank}"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
