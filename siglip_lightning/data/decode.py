"""Decode and check one raw example: images (lazily, size-checked before decoding) and captions.

Failures raise :class:`BadSample` with one of ``SKIP_REASONS``, which the stream counts and skips.
"""
from __future__ import annotations

import io
import os
import random
from typing import Any, Optional

from PIL import Image

SKIP_REASONS = (
    "image_missing", "image_undecodable", "image_too_small", "image_too_large", "image_unconvertible",
    "caption_missing", "caption_empty", "shard_unreadable",
)
MIN_IMAGE_SIDE = 4
MAX_IMAGE_PIXELS = 64_000_000  # larger images are skipped before decoding (memory, time)


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is one of ``SKIP_REASONS``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def open_image(value: Any, root: Optional[str] = None) -> Image.Image:
    """A lazily decoded PIL image from a column value: PIL, bytes, {'bytes', 'path'} or a path
    (relative paths are taken from ``root``, the folder of a jsonl/csv file that lists them)."""
    if isinstance(value, str) and root and not os.path.isabs(value):
        value = os.path.join(root, value)
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    if isinstance(value, dict) and value.get("bytes") is not None:
        return Image.open(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path"):
        return Image.open(value["path"])
    if isinstance(value, str):
        return Image.open(value)
    raise ValueError(f"no image in a value of type {type(value).__name__}")


def decode_image(value: Any) -> Image.Image:
    """A fully decoded PIL image (truncated files fail here rather than in the transform)."""
    image = open_image(value)
    image.load()
    return image


def is_embedding(value: Any) -> bool:
    """A list/array of numbers (a cached embedding column), as opposed to image bytes or a path."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return len(value.shape) == 1
    return isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(value[0], (float, int))


def pick_caption(value: Any, rng: random.Random) -> Optional[str]:
    """One caption: a string as is; one of a list, drawn anew at each visit."""
    if isinstance(value, (list, tuple)):
        value = [v for v in value if isinstance(v, str) and v.strip()]
        value = rng.choice(value) if value else None
    if not isinstance(value, str) or not value.strip():
        return None
    return value


def check_caption(value: Any, rng: random.Random) -> str:
    if value is None or (isinstance(value, (list, tuple)) and not value):
        raise BadSample("caption_missing")
    caption = pick_caption(value, rng)
    if caption is None:
        raise BadSample("caption_empty" if isinstance(value, (str, list, tuple)) else "caption_missing")
    return caption


def load_checked(value: Any, draft_size: int, min_side: int, max_pixels: int,
                 root: Optional[str] = None) -> Image.Image:
    """Open, check the size from the header, decode (JPEG at a reduced scale when larger than needed)."""
    if value is None or (isinstance(value, dict) and value.get("bytes") is None and not value.get("path")):
        raise BadSample("image_missing")
    try:
        image = open_image(value, root)
    except Exception:  # any decoder error means the same here: unusable bytes
        raise BadSample("image_undecodable") from None
    width, height = image.size
    if min(width, height) < min_side:
        raise BadSample("image_too_small")
    if width * height > max_pixels:
        raise BadSample("image_too_large")
    try:
        if draft_size:
            image.draft(None, (draft_size, draft_size))  # JPEG: decode at 1/2..1/8 scale, never below the target
        image.load()
    except Exception:
        raise BadSample("image_undecodable") from None
    return image
