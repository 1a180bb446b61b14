"""Start a run from another run's weights, adapting what a new resolution changes.

Resolution adaptation (a further stage at a higher resolution) keeps every weight but the image
position embeddings, whose grid grows with the image: those are resized by bilinear
interpolation over the 2-D grid (as big_vision's ``resample_posemb``), not re-initialised.
"""
from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from siglip_lightning.errors import UserInputError
from siglip_lightning.towers.locked import unwrap

# LockedTower adds a ".tower." level: compare keys with it removed so locked and plain runs mix.
_LOCK_LEVEL = re.compile(r"^((?:image|text)_tower\.)(?:tower\.)+")


def _canonical(key: str) -> str:
    return _LOCK_LEVEL.sub(r"\1", key)


def resize_pos_embed(pos_embed: torch.Tensor, new_tokens: int, prefix_tokens: int = 0) -> torch.Tensor:
    """Resize ``[1, prefix + g*g, W]`` position embeddings to ``prefix + new_tokens`` (a square grid)."""
    prefix, grid = pos_embed[:, :prefix_tokens], pos_embed[:, prefix_tokens:]
    old_side, new_side = math.isqrt(grid.shape[1]), math.isqrt(new_tokens)
    if old_side**2 != grid.shape[1] or new_side**2 != new_tokens:
        raise UserInputError(f"cannot resize position embeddings of {grid.shape[1]} to {new_tokens} tokens: "
                             "both must be square grids")
    width = grid.shape[-1]
    image = grid.reshape(1, old_side, old_side, width).permute(0, 3, 1, 2).float()
    resized = F.interpolate(image, size=(new_side, new_side), mode="bilinear", align_corners=False)
    resized = resized.permute(0, 2, 3, 1).reshape(1, new_side * new_side, width).to(pos_embed.dtype)
    return torch.cat([prefix, resized], dim=1)


def load_initial_weights(module: nn.Module, path: str) -> Dict[str, str]:
    """Copy the weights of the Lightning checkpoint at ``path`` into ``module``.

    Image position embeddings of another grid are interpolated; any other shape or key mismatch
    is an error naming the keys. Returns ``{key: what was done}`` for the adapted tensors.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserInputError(f"checkpoint to initialise from not found: {path} (model.init_from)")
    try:  # weights only: a checkpoint must never run code when it is read (docs/RESUMING.md)
        source = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserInputError(f"{path} holds Python objects beyond tensors and plain values, and is not loaded "
                             f"because reading it could run code (model.init_from loads weights only): {err}") from None
    source = source.get("state_dict", source)
    source = {_canonical(k): v for k, v in source.items()}
    target = module.state_dict()
    names = {_canonical(k): k for k in target}
    missing = sorted(set(names) - set(source))
    unexpected = sorted(set(source) - set(names))
    if missing or unexpected:
        raise UserInputError(f"{path} does not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    new_state, notes = {}, {}
    for key, value in source.items():
        want = target[names[key]].shape
        if value.shape != want:
            if key.endswith("image_tower.pos_embed") and value.ndim == 3 and value.shape[-1] == want[-1]:
                tower = unwrap(module.image_tower)
                prefix = 1 if getattr(tower, "class_token", None) is not None else 0
                value = resize_pos_embed(value, want[1] - prefix, prefix)
                notes[key] = f"interpolated {tuple(source[key].shape)} -> {tuple(want)}"
            else:
                raise UserInputError(f"{path}: {key} has shape {tuple(value.shape)}, the model wants {tuple(want)}")
        new_state[names[key]] = value
    module.load_state_dict(new_state, strict=True)
    return notes
