"""What the evaluation callbacks share: when to run, eval mode, and logging under their own name."""
from __future__ import annotations

import contextlib

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from siglip_lightning.errors import UserInputError


@dataclass
class EvalContext:
    """What an evaluation needs besides the model: how text and images are prepared, where the
    built-in sets live, and the precision plugin (``forward_context`` / ``convert_input``).

    Inside a run it comes from the trainer (:meth:`EvalCallback.context`); ``siglip-lightning
    evaluate`` builds it from the model folder (``eval/models.py``). Both then call :meth:`EvalCallback.compute`.
    """

    tokenizer: Any
    transform: Callable
    datamodule: Any = None
    precision: Any = None


def eval_context(datamodule: Any, precision: Any, patch_budget: Optional[int], where: str) -> EvalContext:
    """The datamodule's tokenizer and eval transform (cut to ``patch_budget`` for NaFlex), as a context."""
    tokenizer = getattr(datamodule, "tokenizer", None)
    transform = getattr(datamodule, "eval_transform", None)
    if tokenizer is None or transform is None:
        raise UserInputError(f"{where} needs a datamodule with a tokenizer and an eval_transform "
                             "(ImageTextDataModule, set up)")
    if patch_budget is not None:
        if not hasattr(transform, "with_budget"):
            raise UserInputError(f"{where}: patch_budget is for NaFlex models (data.naflex set); this model "
                                 "resizes images to data.image_size squares")
        transform = transform.with_budget(patch_budget)
    return EvalContext(tokenizer, transform, datamodule, precision)


class EvalCallback(Callback):
    """Runs :meth:`evaluate` every ``every_n_steps`` training steps and/or at the end of each validation.

    Metrics are logged as ``<prefix>/<name>/<metric>``. Every rank takes part (the work is split
    between ranks) and logs the same, already global, values.
    Under ``trainer.validate`` the evaluation runs at the end of the validation loop, which
    Lightning runs only when the datamodule has a validation split (setup says so if not).

    Args:
        name: label of this evaluation in the logged metric names.
        every_n_steps: also evaluate after every this many optimizer steps during fit (None: never).
        at_validation: evaluate at the end of each validation loop (fit and validate), after the
            sanity check.
        patch_budget: for a NaFlex model (``data.naflex``), the patch budget images are cut to here
            (default: the datamodule's ``naflex.eval_budget``); refused for fixed-size images.
    """

    prefix = "eval"

    def __init__(self, name: str, every_n_steps: Optional[int] = None, at_validation: bool = True,
                 patch_budget: Optional[int] = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise UserInputError(f"{type(self).__name__} {name!r}: every_n_steps must be at least 1, got {every_n_steps}")
        if patch_budget is not None and patch_budget < 1:
            raise UserInputError(f"{type(self).__name__} {name!r}: patch_budget must be positive, got {patch_budget}")
        self.name, self.every_n_steps, self.at_validation = name, every_n_steps, at_validation
        self.patch_budget = patch_budget
        self.last_metrics: Dict[str, float] = {}
        self._last_step: Optional[int] = None

    # --- to implement ----------------------------------------------------------------------------
    def measure(self, module: LightningModule, context: EvalContext) -> Dict[str, float]:
        """The metrics of ``module`` (already in eval mode, under no_grad and the precision context)."""
        raise NotImplementedError

    def summary(self, metrics: Dict[str, float]) -> str:
        return ", ".join(f"{key} {value:.4f}" for key, value in metrics.items())

    # --- shared ----------------------------------------------------------------------------------
    def context(self, trainer: Trainer) -> EvalContext:
        """The run's datamodule tools, so evaluation sees what training saw."""
        return eval_context(trainer.datamodule, trainer.precision_plugin, self.patch_budget,
                            f"{type(self).__name__} {self.name!r}")

    def compute(self, module: LightningModule, context: EvalContext) -> Dict[str, float]:
        """:meth:`measure` in eval mode, without gradients, in the precision's forward context; the one
        entry point of both the callback and ``siglip-lightning evaluate``."""
        was_training = module.training
        module.eval()
        forward = context.precision.forward_context() if context.precision is not None else contextlib.nullcontext()
        try:
            with torch.no_grad(), forward:
                return self.measure(module, context)
        finally:
            module.train(was_training)

    def evaluate(self, trainer: Trainer, module: LightningModule) -> Dict[str, float]:
        return self.compute(module, self.context(trainer))

    def run(self, trainer: Trainer, module: LightningModule, on_step: bool) -> Dict[str, float]:
        metrics = self.evaluate(trainer, module)
        self.last_metrics, self._last_step = metrics, trainer.global_step
        for key, value in metrics.items():
            # Every rank holds the same global value; sync_dist only tells Lightning so (no warning).
            module.log(f"{self.prefix}/{self.name}/{key}", float(value), on_step=on_step, on_epoch=not on_step,
                       sync_dist=True)
        rank_zero_info(f"{self.prefix} {self.name} (step {trainer.global_step}): {self.summary(metrics)}")
        return metrics

    # --- hooks -----------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate") or not self.at_validation:
            return
        # Lightning skips the whole validation loop (and so this callback) when there is no
        # validation data: say so instead of finishing silently without a number.
        loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
        empty = loader is None or (isinstance(loader, (list, tuple, dict)) and len(loader) == 0)
        if not (empty or trainer.limit_val_batches == 0):
            return
        if stage == "fit":
            if not self.every_n_steps:
                rank_zero_warn(f"{type(self).__name__} {self.name!r} will not run: there is no validation loop "
                               "(no validation split or limit_val_batches=0) and every_n_steps is not set")
            return
        raise UserInputError(
            f"{type(self).__name__} {self.name!r} runs at the end of the validation loop, which Lightning "
            "skips here: the data has no validation split (or trainer.limit_val_batches is 0). Point "
            "data.path at data with a validation split (e.g. the run's own training data), keeping "
            "data.tokenizer_path / the run's data settings; see docs/EVALUATION.md")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        # With gradient accumulation several batches end on one step: evaluate once.
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.run(trainer, pl_module, on_step=True)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self.at_validation:
            return
        if trainer.state.fn == "fit" and self._last_step == trainer.global_step:
            return  # already evaluated at this step by every_n_steps
        self.run(trainer, pl_module, on_step=False)
