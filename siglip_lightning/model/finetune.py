"""Fine-tuning controls against forgetting: per-tower and t'/b lr scales, layer-wise lr decay, frozen blocks.

Fine-tuning a released checkpoint on a narrow dataset moves the weights that carried its general
(zero-shot) ability. The usual remedies, each a ``SigLIPModule`` argument whose default does nothing:

- a smaller lr for one tower (``image_tower_lr_scale``, ``text_tower_lr_scale``) or for t' and b
  (``logit_lr_scale``); t' and b can also be frozen (``learn_logit_scale``, ``learn_logit_bias``);
- layer-wise lr decay (``layer_decay``, as in BEiT / ELECTRA fine-tuning): in a tower with L blocks,
  the embeddings get ``decay**(L + 1)`` times the lr, block i (0-based) ``decay**(L - i)``, and the
  final norm and head the full lr: the lower the layer, the more general its features, the less
  it moves;
- freezing the embeddings and the first k blocks of a tower (``image_tower_frozen_blocks``,
  ``text_tower_frozen_blocks``; -1 freezes the whole tower).

WiSE-FT (Wortsman et al. 2022, interpolating the initial and fine-tuned weights) is a command on
finished checkpoints: ``siglip-lightning wise-ft`` (``commands/wise_ft.py``).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from torch import nn

from siglip_lightning.errors import UserInputError

TOWERS = ("image_tower", "text_tower")
# Parameters below the first block of our towers (VisionTower, TextTower and the pretrained ones).
EMBEDDINGS = ("patch_embed", "pos_embed", "token_embedding", "positional_embedding", "cls_emb")
BLOCK = re.compile(r"(?:^|\.)resblocks\.(\d+)\.")


def tower_depth(tower: nn.Module) -> int:
    """Number of transformer blocks (0 for a tower without ``resblocks``, e.g. a precomputed one)."""
    blocks = {int(m.group(1)) for name, _ in tower.named_parameters() if (m := BLOCK.search(name))}
    return max(blocks) + 1 if blocks else 0


def layer_of(name: str, depth: int) -> Optional[int]:
    """0 for embeddings, i + 1 for block i, depth + 1 for what sits on top; None outside a tower's stack."""
    match = BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    leaf = name.split(".")
    if any(part in EMBEDDINGS for part in leaf):
        return 0
    return depth + 1


def check_controls(hparams) -> None:
    for key in ("image_tower_frozen_blocks", "text_tower_frozen_blocks"):
        if hparams.get(key, 0) < -1:
            raise UserInputError(f"model.{key} must be -1 (whole tower), 0 (none) or k > 0, got {hparams.get(key)}")
    decay = hparams.get("layer_decay", 1.0)
    if not 0.0 < decay <= 1.0:
        raise UserInputError(f"model.layer_decay must be in (0, 1], got {decay}")
    for key in ("text_tower_lr_scale", "logit_lr_scale"):
        if hparams.get(key, 1.0) < 0:
            raise UserInputError(f"model.{key} must be >= 0, got {hparams.get(key)}")


def freeze_controlled(module: nn.Module) -> None:
    """Set ``requires_grad=False`` on frozen blocks and on b when ``learn_logit_bias`` is off."""
    hparams = module.hparams
    check_controls(hparams)
    if not hparams.get("learn_logit_bias", True) and getattr(module, "logit_bias", None) is not None:
        module.logit_bias.requires_grad_(False)
    for tower_name in TOWERS:
        k = hparams.get(f"{tower_name}_frozen_blocks", 0)
        if k == 0:
            continue
        tower = getattr(module, tower_name)
        depth = tower_depth(tower)
        if k > depth:
            raise UserInputError(f"model.{tower_name}_frozen_blocks={k} but the tower has {depth} blocks")
        for name, param in tower.named_parameters():
            layer = layer_of(name, depth)
            if k == -1 or layer <= k:  # embeddings (0) and blocks 1..k
                param.requires_grad_(False)


def lr_multipliers(module: nn.Module) -> Dict[int, float]:
    """id(parameter) -> multiplier of its group's lr from the controls (1.0 where none applies)."""
    hparams = module.hparams
    decay = hparams.get("layer_decay", 1.0)
    out: Dict[int, float] = {}
    for tower_name in TOWERS:
        tower = getattr(module, tower_name)
        # the image tower's own scale is applied by parameter_groups already
        scale = hparams.get("text_tower_lr_scale", 1.0) if tower_name == "text_tower" else 1.0
        depth = tower_depth(tower) if decay != 1.0 else 0
        for name, param in tower.named_parameters():
            layer = layer_of(name, depth)
            out[id(param)] = scale * (decay ** (depth + 1 - layer) if depth else 1.0)
    for name in ("logit_scale", "logit_bias"):
        param = getattr(module, name, None)
        if param is not None:
            out[id(param)] = hparams.get("logit_lr_scale", 1.0)
    return out


def apply_lr_controls(module: nn.Module, groups: List[dict]) -> List[dict]:
    """Split ``groups`` (from ``parameter_groups``) so each parameter's lr carries its multiplier.

    Every other key of a group (weight decay, ...) is kept; groups with equal settings are merged,
    and returned with the highest lr first (so ``param_groups[0]`` logs the peak lr).
    """
    multipliers = lr_multipliers(module)
    if all(m == 1.0 for m in multipliers.values()):
        return groups
    merged: Dict[Tuple, dict] = {}
    for group in groups:
        rest = {k: v for k, v in group.items() if k != "params"}
        for param in group["params"]:
            factor = multipliers.get(id(param), 1.0)
            settings = dict(rest, lr=rest.get("lr", module.hparams.lr) * factor)
            key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
            merged.setdefault(key, dict(settings, params=[]))["params"].append(param)
    return sorted(merged.values(), key=lambda g: -g.get("lr", 0.0))
