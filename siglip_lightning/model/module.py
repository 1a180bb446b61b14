"""SigLIPModule: two towers, one pluggable contrastive loss, and the learnable t' and b."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Literal, Optional, Tuple

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from siglip_lightning import _compat
from siglip_lightning.errors import UserInputError
from siglip_lightning.model.finetune import apply_lr_controls, freeze_controlled
from siglip_lightning.model.gradcache import cached_gradient_loss, check_micro_batch_size, wants_micro_batches
from siglip_lightning.model.init_from import load_initial_weights
from siglip_lightning.model.objectives import (
    attach_objectives, drop_inactive_gradients, objective_step, start_teacher_if_due, update_teacher,
)
from siglip_lightning.objectives.base import Objective
from siglip_lightning.losses import ContrastiveLoss, SigmoidLoss
from siglip_lightning.model.hparams import module_hparams_to_ignore
from siglip_lightning.model.precision import keep_float32
from siglip_lightning.model.optim import decayed_names, parameter_groups, use_fused_optimizer, warmup_cosine
from siglip_lightning.towers.contract import spec_of


def check_towers_match_data(module: "SigLIPModule", datamodule: Any) -> None:
    """Fail early, naming the keys, when the towers cannot take what the data produces."""
    if datamodule is None:
        return
    image, text = spec_of(module.image_tower), spec_of(module.text_tower)
    tokenizer = getattr(datamodule, "tokenizer", None)
    if tokenizer is not None and text.vocab_size is not None and tokenizer.vocab_size > text.vocab_size:
        folder = getattr(tokenizer, "path", None) or getattr(tokenizer, "model_name", None)
        if folder is not None:  # a pretrained folder's own tokenizer: data.vocab_size plays no part
            raise UserInputError(
                f"the tokenizer of {folder} has {tokenizer.vocab_size} tokens but model.text_tower vocab_size is "
                f"{text.vocab_size}: that tokenizer does not belong to this text tower")
        raise UserInputError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but model.text_tower vocab_size is {text.vocab_size}: "
            "raise model.text_tower.init_args.vocab_size or lower data.vocab_size"
        )
    data = getattr(datamodule, "hparams", {})
    for key, tower_value, tower_key in [
        ("context_length", text.context_length, "model.text_tower.init_args.context_length"),
        ("image_size", image.image_size, "model.image_tower.init_args.image_size"),
    ]:
        data_value = data.get(key)
        if tower_value is not None and data_value is not None and tower_value != data_value:
            raise UserInputError(f"data.{key} is {data_value} but {tower_key} is {tower_value}: make them equal")
    naflex = data.get("naflex")
    if naflex is not None:  # NaFlex batches are patches cut by the data: their side must be the tower's
        data_patch = naflex.get("patch_size") if isinstance(naflex, dict) else getattr(naflex, "patch_size", None)
        if data_patch is not None and image.patch_size is not None and data_patch != image.patch_size:
            raise UserInputError(f"data.naflex.patch_size is {data_patch} but model.image_tower.init_args.patch_size "
                                 f"is {image.patch_size}: make them equal")


class SigLIPModule(L.LightningModule):
    """Image tower + text tower + contrastive loss, trained with AdamW and warmup + cosine.

    Args:
        image_tower: maps images ``[b, 3, H, W]`` to embeddings ``[b, d]``.
        text_tower: maps token ids ``[b, L]`` to embeddings ``[b, d]``.
        loss: the contrastive loss (``SigmoidLoss``, ``SoftmaxLoss``, ...); default sigmoid.
        init_logit_scale: initial t' (t = exp(t')); ``None`` takes the loss's own (sigmoid: log 10,
            softmax: log(1/0.07)), as in the paper's Table 4 and CLIP.
        init_logit_bias: initial b; ``None`` takes the loss's own (sigmoid: -10; softmax: no bias).
        learn_logit_scale: train t' (else it stays at its init).
        lr: peak learning rate.
        weight_decay: torch AdamW's decay (multiplied by the lr); the paper's decoupled 1e-4 at
            lr 1e-3 corresponds to 0.1. Never applied to biases, norms, t' or b.
        weight_decay_mask: which parameters decay: ``kernels`` (big_vision, as the paper trained:
            dense, conv and attention-projection weights only; position embeddings, the MAP probe
            and token embeddings are not decayed) or ``matrices`` (open_clip: every tensor with
            two or more dimensions). See ``model/optim.py``.
        betas: AdamW betas; beta2 = 0.95 as the paper recommends for stability.
        eps: AdamW epsilon.
        warmup_steps: linear warmup steps.
        total_steps: length of the cosine schedule; ``None`` uses ``trainer.max_steps``.
        min_lr_ratio: final lr as a fraction of ``lr``.
        image_tower_lr_scale: lr multiplier of the image tower (0.1 to fine-tune a pre-trained one).
        image_tower_weight_decay: apply weight decay to the image tower (the paper fine-tunes a
            pre-trained one with none).
        init_from: a Lightning checkpoint whose weights start this fit (resolution adaptation:
            image position embeddings are interpolated to the new grid); a resumed fit
            (``--ckpt_path``) overwrites them with its own.
        compile: ``torch.compile`` both towers in place (state-dict keys unchanged).
        fused_optimizer: use AdamW's fused kernel (one pass over all parameters instead of one
            small op per tensor: about 6x faster optimizer steps on a CPU). ``None``: on whenever
            every trained parameter is a plain CPU or CUDA tensor (off for FSDP2's sharded ones).
        micro_batch_size: embed a training batch larger than this in micro-batches of at most this
            many pairs with gradient caching (``siglip_lightning/model/gradcache.py``): the same gradient
            as the whole batch at once, the activation memory of one micro-batch, about one extra
            forward pass. ``None``: the whole batch in one piece.
        text_tower_lr_scale: lr multiplier of the text tower. The next five keys are fine-tuning
            controls against forgetting (``model/finetune.py``); their defaults change nothing.
        logit_lr_scale: lr multiplier of t' and b.
        learn_logit_bias: train b (else it stays at its init, e.g. the checkpoint's).
        layer_decay: layer-wise lr decay: block i of L gets ``layer_decay**(L - i)`` x the lr, the
            embeddings ``layer_decay**(L + 1)``, the head 1; 1.0 is off.
        image_tower_frozen_blocks: freeze the image tower's embeddings and first k blocks (-1: all of it).
        text_tower_frozen_blocks: the same for the text tower.
        objectives: training objectives beside the contrastive loss, each with its weight and its
            [start, stop) span as fractions of the steps (SigLIP 2: ``LocCaCaptioning``,
            ``SelfDistillation``, ``MaskedPrediction``; ``siglip_lightning/objectives/``). Empty: the
            contrastive loss alone, as before.
        teacher_momentum: m of the EMA teacher of the self-distillation objectives
            (theta_t <- m theta_t + (1 - m) theta_s after each optimizer step).
    """

    def __init__(
        self,
        image_tower: nn.Module,
        text_tower: nn.Module,
        loss: Optional[ContrastiveLoss] = None,
        init_logit_scale: Optional[float] = None,
        init_logit_bias: Optional[float] = None,
        learn_logit_scale: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        weight_decay_mask: Literal["kernels", "matrices"] = "kernels",
        betas: Tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        warmup_steps: int = 100,
        total_steps: Optional[int] = None,
        min_lr_ratio: float = 0.0,
        image_tower_lr_scale: float = 1.0,
        image_tower_weight_decay: bool = True,
        init_from: Optional[str] = None,
        compile: bool = False,
        fused_optimizer: Optional[bool] = None,
        micro_batch_size: Optional[int] = None,
        text_tower_lr_scale: float = 1.0,
        logit_lr_scale: float = 1.0,
        learn_logit_bias: bool = True,
        layer_decay: float = 1.0,
        image_tower_frozen_blocks: int = 0,
        text_tower_frozen_blocks: int = 0,
        objectives: Optional[List[Objective]] = None,
        teacher_momentum: float = 0.996,
    ) -> None:
        super().__init__()
        check_micro_batch_size(micro_batch_size)
        decayed_names(nn.Module(), weight_decay_mask)  # refuse an unknown mask now, not at the first step
        # Python-built towers/loss are left out of hparams so checkpoints stay weights_only-loadable.
        self.save_hyperparameters(ignore=module_hparams_to_ignore(image_tower=image_tower, text_tower=text_tower,
                                                                  loss=loss, objectives=objectives))
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.loss = loss if loss is not None else SigmoidLoss()
        scale = self.loss.init_logit_scale if init_logit_scale is None else init_logit_scale
        bias = self.loss.init_logit_bias if init_logit_bias is None else init_logit_bias
        self.logit_scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learn_logit_scale)
        self.logit_bias = nn.Parameter(torch.tensor(float(bias))) if bias is not None else None
        self._last_step_end: Optional[float] = None  # samples/s: when the current interval began
        self._samples_since = 0  # and how many samples (all ranks) it has seen
        self._grads_zeroed = False
        self._skipped: Dict[str, int] = {}  # bad samples of this epoch, by reason
        freeze_controlled(self)
        attach_objectives(self, objectives, teacher_momentum)  # after freezing: the teacher copies the tower

    # --- t', b and norms stay float32 under bf16-true / 16-true (model/precision.py) ----------------
    def to(self, *args: Any, **kwargs: Any) -> "SigLIPModule":
        with keep_float32(self):
            return super().to(*args, **kwargs)

    def half(self) -> "SigLIPModule":
        with keep_float32(self):
            return super().half()

    def bfloat16(self) -> "SigLIPModule":
        with keep_float32(self):
            return super().bfloat16()

    def setup(self, stage: str) -> None:
        check_towers_match_data(self, getattr(self.trainer, "datamodule", None))
        if stage == "fit" and self.trainer.accumulate_grad_batches > 1:
            # Summing the losses of micro-batches is not the loss of their union: each micro-batch
            # would only see its own negatives. model.micro_batch_size caches the embeddings instead.
            raise UserInputError(
                f"trainer.accumulate_grad_batches={self.trainer.accumulate_grad_batches} is not supported: "
                "accumulating contrastive losses shrinks the negatives to one micro-batch; raise "
                "data.batch_size and set model.micro_batch_size to what fits in memory (gradient caching: "
                "the same gradient as the whole batch), or add devices (with a chunked loss)")
        for objective in self.objectives:
            objective.configure(getattr(self.trainer, "datamodule", None))
        if stage == "fit" and len(self.objectives) and self.hparams.get("micro_batch_size"):
            raise UserInputError("model.micro_batch_size (gradient caching) does not support model.objectives: "
                                 "unset one of them")
        if stage == "fit" and self.hparams.get("init_from"):
            load_initial_weights(self, self.hparams.init_from)

    def configure_model(self) -> None:
        # Under ModelParallelStrategy (configs/strategies/fsdp.yaml) shard the towers with FSDP2.
        if self.device_mesh is not None:
            from siglip_lightning.model.sharding import shard_towers

            shard_towers(self, self.device_mesh)
        if self.hparams.get("compile"):
            self.image_tower.compile()
            self.text_tower.compile()

    # --- forward -------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tower(images), dim=-1)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_tower(text), dim=-1)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(text)

    def forward_objectives(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(contrastive loss, total loss) with ``model.objectives`` (model/objectives.py). A method of its own so
        that FSDP2 gathers the root's parameters around it as around ``forward`` (model/sharding.py)."""
        return objective_step(self, batch)

    def compute_loss(self, batch: Dict[str, Any]) -> torch.Tensor:
        image_features, text_features = self(batch["image"], batch["text"])
        return self.loss(image_features, text_features, self.logit_scale.exp(), self.logit_bias)

    # --- steps -----------------------------------------------------------------------------------
    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        micro = self.hparams.get("micro_batch_size")
        if wants_micro_batches(self, batch["image"].shape[0], micro):
            # Backpropagates all micro-batches but the last; Lightning's backward of `step_loss` does the
            # rest. Lightning zeroes gradients between training_step and backward: do it here instead.
            for optimizer in self.trainer.optimizers:
                optimizer.zero_grad()
            self._grads_zeroed = True
            loss, step_loss = cached_gradient_loss(self, batch["image"], batch["text"], micro)
        elif len(self.objectives):
            loss, step_loss = self.forward_objectives(batch)
        else:
            loss = step_loss = self.compute_loss(batch)
        # Under a global loss each rank returns its share; their mean over ranks is the global loss.
        self.log("train/loss", loss, prog_bar=True, sync_dist=self._trainer is not None and self.trainer.world_size > 1)
        if self._writes_logs_this_step():
            # Each self.log costs ~1.5 ms on a small CPU model (Lightning re-walks its results): t, b
            # and lr are logged only on the steps the logger writes (log_every_n_steps).
            self.log("train/t", self.logit_scale.detach().exp(), prog_bar=True)
            if self.logit_bias is not None:
                self.log("train/b", self.logit_bias.detach(), prog_bar=True)
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer else self.hparams.lr)
        # Bad samples skipped by the data, summed over the epoch and logged at its end: eight self.log
        # calls a step cost more than a small model's step (tests/experiments overhead measurement).
        for reason, count in batch.get("skipped", {}).items():
            self._skipped[reason] = self._skipped.get(reason, 0) + int(count)
        return step_loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        start_teacher_if_due(self)  # SILC / TIPS start: the EMA teacher is copied from the student

    def on_train_epoch_start(self) -> None:
        self._skipped = {}

    def on_train_epoch_end(self) -> None:
        for reason, count in self._skipped.items():
            self.log(f"data/skipped_{reason}", float(count))

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        if self._grads_zeroed:  # by training_step, before gradient caching filled them: keep them
            self._grads_zeroed = False
            return
        optimizer.zero_grad()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        drop_inactive_gradients(self)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        update_teacher(self)  # the EMA teacher follows the student after each optimizer step

    def _writes_logs_this_step(self) -> bool:
        return _compat.logs_this_step(self._trainer) if self._trainer else True

    def on_train_batch_end(self, outputs: Any, batch: Dict[str, Any], batch_idx: int) -> None:
        # samples/s over the steps since the last logged one (the first step, with its warm-up, excluded)
        now = time.perf_counter()
        if self._last_step_end is None:
            self._last_step_end = now
            return
        self._samples_since += batch["image"].shape[0] * self.trainer.world_size
        if self._writes_logs_this_step():
            self.log("train/samples_per_sec", self._samples_since / max(now - self._last_step_end, 1e-9))
            self._last_step_end, self._samples_since = now, 0

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["image"].shape[0])
        return loss

    def predict_step(self, batch: Dict[str, Any], batch_idx: int) -> Dict[str, torch.Tensor]:
        return {"image_features": self.encode_image(batch["image"]), "text_features": self.encode_text(batch["text"])}

    # --- optimisation --------------------------------------------------------------------------
    def _total_steps(self) -> int:
        if self.hparams.total_steps:
            return int(self.hparams.total_steps)
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            return int(self.trainer.max_steps)
        rank_zero_warn("model.total_steps and trainer.max_steps are unset: the cosine schedule uses "
                       "trainer.estimated_stepping_batches, which needs a sized dataset")
        return int(self.trainer.estimated_stepping_batches)

    def parameter_groups(self) -> list:
        """AdamW groups (``model/optim.py``); override to change which tensors decay or their lr."""
        return apply_lr_controls(self, parameter_groups(self))

    def use_fused_optimizer(self) -> bool:
        return use_fused_optimizer(self)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=self.hparams.lr, betas=tuple(self.hparams.betas),
                                      eps=self.hparams.eps, fused=self.use_fused_optimizer())
        total, warmup, floor = self._total_steps(), self.hparams.warmup_steps, self.hparams.min_lr_ratio
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total, floor))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
