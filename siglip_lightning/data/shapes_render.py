"""Drawing the built-in data's scenes: colours, shape kinds, sizes, and a scene rendered to PNG bytes."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "cyan": (40, 210, 220),
    "pink": (245, 130, 190),
    "brown": (130, 80, 40),
}
SHAPES = ["circle", "square", "triangle", "diamond", "cross", "hexagon", "star", "ring"]
SIZES = {"small": 0.16, "large": 0.30}  # radius as a fraction of the image side


@dataclass
class SceneObject:
    color: str
    shape: str
    size: str
    cx: float  # centre, in [0, 1]
    cy: float


def draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, side: int, height: Optional[int] = None,
                fill: Any = None) -> None:
    """Draw ``obj`` on a ``side`` (wide) x ``height`` (default ``side``) canvas; sizes follow the short side.
    ``fill`` overrides the colour (a label mask draws each object with its own index, data/probe_scenes.py)."""
    height = side if height is None else height
    r = SIZES[obj.size] * min(side, height)
    cx, cy = obj.cx * side, obj.cy * height
    fill = COLORS[obj.color] if fill is None else fill
    box = [cx - r, cy - r, cx + r, cy + r]
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif obj.shape == "triangle":
        draw.regular_polygon((cx, cy, r), 3, fill=fill)
    elif obj.shape == "diamond":
        draw.regular_polygon((cx, cy, r), 4, fill=fill)
    elif obj.shape == "hexagon":
        draw.regular_polygon((cx, cy, r), 6, fill=fill)
    elif obj.shape == "cross":
        w = r * 0.35
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    elif obj.shape == "star":
        points = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + rad * math.cos(angle), cy + rad * math.sin(angle)))
        draw.polygon(points, fill=fill)
    elif obj.shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r * 0.4)))
    else:  # pragma: no cover - SHAPES lists every kind drawn above
        raise ValueError(obj.shape)


def render_scene(objects: List[SceneObject], side: int, rng: np.random.Generator,
                 height: Optional[int] = None) -> bytes:
    """Draw at 4x and downsample (anti-aliasing), on a random dark background; return PNG bytes.

    ``side`` x ``height`` pixels (width x height; square by default). Shapes keep their proportions
    (a circle stays round) at any aspect ratio; positions are fractions of each side.
    """
    height = side if height is None else height
    background = tuple(int(v) for v in rng.integers(0, 70, size=3))
    image = Image.new("RGB", (side * 4, height * 4), background)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_object(draw, obj, side * 4, height * 4)
    image = image.resize((side, height), Image.Resampling.BOX)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
