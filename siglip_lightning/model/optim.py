"""AdamW parameter groups (which tensors decay, per-tower lr scales) and the warmup + cosine schedule."""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
from torch import nn


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup from 0, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def is_dtensor(tensor: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(tensor, DTensor)


def parameter_groups(module: nn.Module) -> List[dict]:
    """AdamW groups of a SigLIPModule: decay on matrices only; the image tower may get its own lr scale."""
    hparams = module.hparams
    groups: Dict[Tuple[bool, float], list] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        image = name.startswith("image_tower.")
        decay = param.ndim >= 2 and not name.startswith("logit_")
        decay = decay and (hparams.get("image_tower_weight_decay", True) or not image)
        scale = hparams.image_tower_lr_scale if image else 1.0
        groups.setdefault((decay, scale), []).append(param)
    return [
        {"params": params, "weight_decay": hparams.weight_decay if decay else 0.0, "lr": hparams.lr * scale}
        for (decay, scale), params in groups.items()
    ]


def use_fused_optimizer(module: nn.Module) -> bool:
    """``model.fused_optimizer`` if set, else on whenever every trained parameter is a plain CPU/CUDA tensor."""
    choice = module.hparams.get("fused_optimizer")
    if choice is not None:
        return bool(choice)
    trained = [p for p in module.parameters() if p.requires_grad]
    return all(p.device.type in ("cpu", "cuda") and not is_dtensor(p) for p in trained)
