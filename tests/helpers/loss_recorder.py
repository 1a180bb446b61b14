"""A callback that records, on every rank, what the loss saw and what the optimizer got.

Used by tests/test_recipes_distributed.py: stacked on a recipe run through the CLI on several
processes, it writes ``rank{r}.pt`` with, per training step: the image and text features that
entered the loss (float64 copies), t, b, the loss the rank returned, the gradient that reached
the features, the logged ``train/loss``, and the gradients of t' and b after DDP's all-reduce; with
``model.objectives``, each objective's per-example losses and its logged value.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

import torch
from lightning.pytorch.callbacks import Callback


class LossRecorder(Callback):
    """Record the loss inputs, outputs and gradients of each training step.

    Args:
        out_dir: folder for ``rank{r}.pt``.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.steps: List[Dict[str, Any]] = []
        self.val: List[Dict[str, Any]] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        loss = pl_module.loss
        original = loss.forward
        recorder = self

        def recording_forward(image_features, text_features, logit_scale, logit_bias=None):
            value = original(image_features, text_features, logit_scale, logit_bias)
            entry = {"x": image_features.detach().double().clone(), "y": text_features.detach().double().clone(),
                     "t": float(logit_scale), "b": None if logit_bias is None else float(logit_bias),
                     "loss": float(value)}
            if pl_module.training:
                for key, tensor in (("grad_x", image_features), ("grad_y", text_features)):
                    if tensor.requires_grad:
                        tensor.register_hook(lambda g, key=key, entry=entry: entry.__setitem__(key, g.double().clone()))
                recorder.steps.append(entry)
            else:
                recorder.val.append(entry)
            return value

        loss.forward = recording_forward
        for objective in getattr(pl_module, "objectives", []):  # SigLIP 2's: their per-example losses
            objective.per_example = self._recording(objective)

    def _recording(self, objective):
        original, recorder = objective.per_example, self

        def recording_per_example(context):
            values = original(context)
            recorder.steps[-1].setdefault("objectives", {})[objective.log_name] = values.detach().double().clone()
            return values

        return recording_per_example

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        entry = self.steps[-1]
        entry["grad_logit_scale"] = pl_module.logit_scale.grad.double().clone()
        if pl_module.logit_bias is not None:
            entry["grad_logit_bias"] = pl_module.logit_bias.grad.double().clone()
        entry["logit_scale"] = float(pl_module.logit_scale.detach())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps[-1]["logged"] = float(trainer.callback_metrics["train/loss"])
        self.steps[-1]["objectives_logged"] = {name: float(trainer.callback_metrics[f"train/{name}"])
                                               for name in self.steps[-1].get("objectives", {})}

    def on_validation_end(self, trainer, pl_module) -> None:
        if "val/loss" in trainer.callback_metrics:
            self.val_logged = float(trainer.callback_metrics["val/loss"])

    def on_fit_end(self, trainer, pl_module) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        torch.save({"world": trainer.world_size, "steps": self.steps, "val": self.val,
                    "val_logged": getattr(self, "val_logged", None)},
                   os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))
