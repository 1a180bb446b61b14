"""WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022): the weights
``(1 - alpha) * initial + alpha * fine-tuned``. alpha = 0 is the checkpoint fine-tuning started from,
1 the fine-tuned model; in between often keeps most of the new task and most of the zero-shot ability.

The initial weights of a run are rebuilt from the run's own record: the ``--pretrained`` towers load
the released weights in their constructors and t', b come from ``model.init_logit_*``, so a module
made from the checkpoint's hyper-parameters *without* its state dict is exactly the step-0 model.
A run started with ``model.init_from`` starts from that checkpoint's weights instead.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, Optional

import torch

from siglip_lightning.errors import UserInputError


def load_ckpt(path: str) -> dict:
    if not Path(path).is_file():
        raise UserInputError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def initial_state(checkpoint: dict, initial: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The state dict the fine-tuning run of ``checkpoint`` started from (``initial``: a checkpoint that says so)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if initial is None and hparams.get("init_from"):
        initial = hparams["init_from"]
    if initial is not None:
        return load_ckpt(initial)["state_dict"]
    # the table of checkpoint families knows which towers are built from released weights
    from siglip_lightning.interop.pretrained_folder import released_source

    if released_source(hparams) is None:
        raise UserInputError("this run did not start from released weights (--pretrained) or model.init_from: "
                             "name the checkpoint it started from with --initial")
    from siglip_lightning.model.module import SigLIPModule

    bare = {k: v for k, v in checkpoint.items() if k not in ("optimizer_states", "lr_schedulers", "loops", "callbacks")}
    bare["state_dict"] = {}
    buffer = io.BytesIO()
    torch.save(bare, buffer)
    buffer.seek(0)
    module = SigLIPModule.load_from_checkpoint(buffer, map_location="cpu", strict=False, weights_only=True)
    return {k: v.detach() for k, v in module.state_dict().items()}


def interpolate(initial: Dict[str, torch.Tensor], finetuned: Dict[str, torch.Tensor], alpha: float) -> Dict[str, torch.Tensor]:
    """``(1 - alpha) * initial + alpha * finetuned`` on every floating tensor; others from ``finetuned``."""
    if set(initial) != set(finetuned):
        raise UserInputError(f"the two checkpoints hold different tensors: only initial {sorted(set(initial) - set(finetuned))[:5]}, "
                             f"only fine-tuned {sorted(set(finetuned) - set(initial))[:5]}")
    out = {}
    for key, tuned in finetuned.items():
        start = initial[key]
        if start.shape != tuned.shape:
            raise UserInputError(f"{key}: shape {tuple(start.shape)} in the initial weights, {tuple(tuned.shape)} fine-tuned")
        if tuned.is_floating_point():
            out[key] = torch.lerp(start.to(tuned.dtype), tuned, alpha)
        else:
            out[key] = tuned.clone()
    return out


def write_interpolated(finetuned_path: str, alpha: float, out: str, initial: Optional[str] = None) -> Path:
    """A Lightning checkpoint (weights and settings only) with the WiSE-FT weights for ``alpha``."""
    from siglip_lightning.atomic_files import atomic_path

    checkpoint = load_ckpt(finetuned_path)
    state = interpolate(initial_state(checkpoint, initial), checkpoint["state_dict"], alpha)
    keep = {k: v for k, v in checkpoint.items() if k not in ("optimizer_states", "lr_schedulers", "loops", "callbacks")}
    keep["state_dict"] = state
    keep["wise_ft"] = {"alpha": float(alpha), "finetuned": str(finetuned_path), "initial": initial}
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        torch.save(keep, tmp)
    return out_path
