"""The optional regions column (boxes with their captions) for LocCa's localisation tasks.

A source's ``data.regions_column`` holds, per example, a list of ``{"box": [x0, y0, x1, y1],
"caption": str}`` with the box in fractions of the image's width and height (the built-in data
writes it with ``builtin.regions: true``; parquet may also hand back ``{"box": [...], "caption": [...]}``).
Each sample carries ONE region, drawn with the sample's own seeded generator, as fixed-size tensors
that batch like the rest: ``region_box`` ``[4]``, ``region_text`` (its caption's ids) and
``has_region`` (False when the example has none, e.g. a source without the column in a mixture).
"""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, List

import torch

from siglip_lightning.errors import UserInputError

REGION_KEYS = ("region_box", "region_text", "has_region")


def region_list(raw: Any) -> List[Dict[str, Any]]:
    """The regions of one example as a list of ``{"box", "caption"}`` (empty when there are none)."""
    if raw is None:
        return []
    if isinstance(raw, dict):  # columnar: {"box": [...], "caption": [...]}
        return [{"box": b, "caption": c} for b, c in zip(raw.get("box") or [], raw.get("caption") or [])]
    return list(raw)


def region_sample(raw: Any, tokenizer: Callable[[List[str]], torch.Tensor], rng: random.Random,
                  context_length: int) -> Dict[str, torch.Tensor]:
    """One region of the example, drawn with ``rng``, as the three fixed-size tensors of ``REGION_KEYS``."""
    regions = region_list(raw)
    if not regions:
        return {"region_box": torch.zeros(4), "region_text": tokenizer([""])[0],
                "has_region": torch.tensor(False)}
    region = regions[rng.randrange(len(regions))]
    box = torch.tensor([float(v) for v in region["box"]])
    if box.shape != (4,) or not ((box >= 0) & (box <= 1)).all() or box[2] < box[0] or box[3] < box[1]:
        raise UserInputError(f"a region box must be [x0, y0, x1, y1] in [0, 1] with x0 <= x1, y0 <= y1; got "
                             f"{region['box']}")
    ids = tokenizer([str(region["caption"])])[0]
    assert ids.shape[0] == context_length
    return {"region_box": box, "region_text": ids, "has_region": torch.tensor(True)}


def collate_regions(samples: List[Dict[str, Any]], batch: Dict[str, Any]) -> None:
    """Stack the region tensors into ``batch`` when the samples carry them."""
    if REGION_KEYS[0] in samples[0]:
        for key in REGION_KEYS:
            batch[key] = torch.stack([s[key] for s in samples])
