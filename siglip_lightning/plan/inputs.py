"""One training batch of the right shapes for a module's towers, made inside the planner's fake mode."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from siglip_lightning import _compat
from siglip_lightning.errors import UserInputError
from siglip_lightning.towers.contract import spec_of
from siglip_lightning.towers.locked import unwrap


def _naflex_budget(data: Dict[str, Any]) -> Optional[int]:
    naflex = data.get("naflex") or {}
    budgets = naflex.get("budgets") if isinstance(naflex, dict) else getattr(naflex, "budgets", None)
    return max(budgets) if budgets else None


def make_batch(module: nn.Module, rows: int, data: Dict[str, Any], image_dtype: torch.dtype) -> Dict[str, Any]:
    """``{"image": ..., "text": ...}`` with ``rows`` pairs: images (or patch sequences at the largest NaFlex
    budget, every patch real: the most memory a batch can take; or cached embeddings) and token ids."""
    from siglip_lightning.towers.naflex import NaFlexVisionTower
    from siglip_lightning.towers.patches import PatchBatch
    from siglip_lightning.towers.precomputed import PrecomputedImageTower

    image_tower, text = unwrap(module.image_tower), spec_of(module.text_tower)
    if isinstance(image_tower, PrecomputedImageTower):
        image = torch.randn(rows, image_tower.output_dim, dtype=image_dtype)
    elif isinstance(image_tower, NaFlexVisionTower):
        budget = _naflex_budget(data)
        if budget is None:
            raise UserInputError("a NaFlex image tower needs data.naflex.budgets to plan a batch")
        side = int(budget**0.5)
        grid = (side, budget // side)  # the most patches of the budget a grid can take
        length = grid[0] * grid[1]
        patches = torch.randn(rows, budget, 3 * image_tower.patch_size**2, dtype=image_dtype)
        # mask and shapes stay real tensors: the tower reads them as Python numbers
        with _compat.outside_fake_mode():
            mask = torch.zeros(rows, budget, dtype=torch.bool)
            mask[:, :length] = True
            shapes = torch.tensor([list(grid)] * rows)
        image = PatchBatch(patches, mask, shapes)
    else:
        size = spec_of(module.image_tower).image_size or data.get("image_size")
        if size is None:
            raise UserInputError("cannot tell the image size: set data.image_size or the image tower's image_size")
        image = torch.randn(rows, 3, size, size, dtype=image_dtype)
    length = text.context_length or data.get("context_length")
    if length is None:
        raise UserInputError("cannot tell the caption length: set data.context_length")
    ids = torch.randint(0, text.vocab_size or 2, (rows, length))
    return {"image": image, "text": ids}


def batch_bytes(batch: Dict[str, Any]) -> int:
    """Bytes of a batch's tensors (what the data loader hands the step)."""
    total = 0
    for value in batch.values():
        for tensor in (vars(value).values() if not isinstance(value, torch.Tensor) else [value]):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total
