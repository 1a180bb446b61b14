"""How ``SigLIPModule`` runs its extra objectives (``model.objectives``; ``siglip_lightning/objectives/``).

One training step with objectives: the image tower runs once on the un-augmented images up to its
un-pooled tokens; the pooled, normalised embedding feeds the contrastive loss (global over ranks, as
without objectives) and the tokens feed LocCa; the self-distillation objectives make their own views.
The step's loss is  L_contrastive + sum_k w_k * S_k  with S_k each objective's share of its global
per-example mean (``objectives/base.py``), so DDP's gradient average gives the gradient of
L_contrastive + sum_k w_k * mean_global(l_k).

An objective outside its [start, stop) span adds ``0 * sum(its parameters)`` on several ranks (DDP
expects a gradient for every trained parameter; ``find_unused_parameters`` stays off) and its
gradients are then dropped before the optimizer step, so AdamW leaves it untouched (no decay).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from siglip_lightning.errors import UserInputError
from siglip_lightning.objectives.base import Objective, global_mean_share
from siglip_lightning.objectives.context import StepContext
from siglip_lightning.objectives.teacher import EMATeacher
from siglip_lightning.ranks import world_size


def attach_objectives(module: nn.Module, objectives: Optional[List[Objective]], momentum: float) -> None:
    """Build ``module.objectives`` (a ModuleList) and, if one uses it, ``module.teacher``."""
    module.objectives = nn.ModuleList(objectives or [])
    module.teacher = None
    if not module.objectives:
        return
    if not hasattr(module.image_tower, "forward_tokens"):
        raise UserInputError("model.objectives need an image tower that returns its patch tokens (VisionTower or "
                             f"NaFlexVisionTower); got {type(module.image_tower).__name__}")
    names = [o.name for o in module.objectives]
    for index, objective in enumerate(module.objectives):
        objective.build(module.image_tower, module.text_tower)
        objective.log_name = objective.name if names.count(objective.name) == 1 else f"{objective.name}{index}"
        objective.teacher_key = str(index)
    heads = teacher_heads(module)
    if heads:
        module.teacher = EMATeacher(module.image_tower, heads, momentum)


def teacher_heads(module: nn.Module) -> Dict[str, nn.Module]:
    return {o.teacher_key: o.head for o in module.objectives if o.uses_teacher}


def training_progress(module: nn.Module) -> float:
    """global_step / total steps of the schedule (0 outside a fit)."""
    if module._trainer is None:
        return 0.0
    return module.trainer.global_step / max(1, module._total_steps())


def objective_step(module: nn.Module, batch: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(contrastive loss, the step's total loss) of ``batch``; logs each active objective's global mean."""
    progress = training_progress(module)
    active = [o.active(progress) for o in module.objectives]
    tower = module.image_tower
    tokens = tower.forward_tokens(batch["image"]) if any(active) else None
    image_features = F.normalize(tower.pool(*tokens), dim=-1) if tokens is not None else module.encode_image(batch["image"])
    text_features = module.encode_text(batch["text"])
    contrastive = module.loss(image_features, text_features, module.logit_scale.exp(), module.logit_bias)
    teacher = module.teacher
    step = module.trainer.global_step if module._trainer is not None else 0
    context = StepContext(tower, batch, step, module.global_rank, tokens, teacher)
    total = contrastive
    distributed = world_size() > 1
    for on, objective in zip(active, module.objectives):
        if on:
            share = global_mean_share(objective.per_example(context))
            total = total + objective.weight * share
            module.log(f"train/{objective.log_name}", share.detach(), sync_dist=distributed)
        elif distributed:
            total = total + sum(0.0 * p.sum() for p in objective.parameters() if p.requires_grad)
    if any(active):
        module.log("train/total_loss", total.detach(), sync_dist=distributed)
    return contrastive, total


def start_teacher_if_due(module: nn.Module) -> None:
    """Before a training step: when the first teacher objective starts, the teacher becomes the student."""
    teacher = module.teacher
    if teacher is None or bool(teacher.initialised):
        return
    progress = training_progress(module)
    if any(o.uses_teacher and o.active(progress) for o in module.objectives):
        teacher.copy_from(module.image_tower, teacher_heads(module))


def drop_inactive_gradients(module: nn.Module) -> None:
    """Before the optimizer step: objectives outside their span keep no gradient (AdamW skips them)."""
    progress = training_progress(module)
    for objective in module.objectives:
        if not objective.active(progress):
            for param in objective.parameters():
                param.grad = None


def update_teacher(module: nn.Module) -> None:
    """After the optimizer step: one EMA step of the teacher, once it has been initialised."""
    if module.teacher is not None and bool(module.teacher.initialised):
        module.teacher.update(module.image_tower, teacher_heads(module))
