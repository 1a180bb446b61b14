"""Held-out built-in scenes whose ground truth comes from the generator, for the SigLIP 2 study's probes.

* :func:`relation_scene`: two shapes of different colours in a known relation ("left of", "above", ...),
  with its true caption and two hard negatives: the relation reversed, and the two colours swapped.
* :func:`dense_scene` + :func:`patch_labels`: a scene drawn like the training data, and the colour and
  shape under the centre of every patch (0 = background), read from a mask drawn with the same code.

Both draw from their own random streams (split ids 97 and 96), apart from the training (0),
validation (1) and zero-shot (99) ones, so no probe image is a training image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from siglip_lightning.data.shapes_render import SceneObject, draw_object, render_scene
from siglip_lightning.data.synthetic import RELATIONS, ShapesSpec, _phrase, _random_object, _random_scene

RELATION_SPLIT, DENSE_SPLIT = 97, 96
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
MASK_SCALE = 4  # render_scene draws at 4x before downsampling: the mask is read at the same resolution


@dataclass
class ProbeScene:
    image: bytes  # PNG, spec.image_size square
    objects: List[SceneObject]
    caption: str = ""
    negatives: Dict[str, str] = None  # kind ("relation", "colour") -> a caption false of the image


def relation_scene(spec: ShapesSpec, index: int) -> ProbeScene:
    """Two shapes placed as the training generator places a 2-object scene, colours forced apart so that
    swapping them changes the caption. Deterministic in (spec, index)."""
    if spec.num_colors < 2:
        raise ValueError("the spatial test swaps two colours: the data needs num_colors >= 2")
    rng = np.random.default_rng([spec.seed, RELATION_SPLIT, index])
    relation = list(RELATIONS)[rng.integers(len(RELATIONS))]
    dx, dy = RELATIONS[relation]
    jitter = lambda: float(rng.uniform(-0.06, 0.06))  # noqa: E731 - the training generator's jitter
    first = _random_object(spec, rng, 0.5 + 0.25 * dx + jitter(), 0.5 + 0.25 * dy + jitter())
    second = _random_object(spec, rng, 0.5 - 0.25 * dx + jitter(), 0.5 - 0.25 * dy + jitter())
    while second.color == first.color:
        second.color = spec.colors[rng.integers(spec.num_colors)]
    image = render_scene([first, second], spec.image_size, rng)
    swapped = (SceneObject(second.color, first.shape, first.size, 0, 0),
               SceneObject(first.color, second.shape, second.size, 0, 0))
    negatives = {"relation": f"{_phrase(first)} {OPPOSITE[relation]} {_phrase(second)}",
                 "colour": f"{_phrase(swapped[0])} {relation} {_phrase(swapped[1])}"}
    return ProbeScene(image, [first, second], f"{_phrase(first)} {relation} {_phrase(second)}", negatives)


def dense_scene(spec: ShapesSpec, index: int) -> ProbeScene:
    """A scene drawn as the training data's (1..max_objects shapes), square. Deterministic in (spec, index)."""
    rng = np.random.default_rng([spec.seed, DENSE_SPLIT, index])
    objects, caption = _random_scene(spec, rng)
    return ProbeScene(render_scene(objects, spec.image_size, rng), objects, caption, {})


def patch_labels(objects: List[SceneObject], spec: ShapesSpec, grid: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(colour, shape)``, each ``[grid * grid]`` int64 in row-major patch order: 0 for background, else
    1 + the index in ``spec.colors`` / ``spec.shapes`` of the shape drawn last (on top) under the patch's
    centre. The mask is drawn by ``draw_object`` itself, so a ring's hole is background as in the image."""
    side = spec.image_size * MASK_SCALE
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    for number, obj in enumerate(objects, start=1):
        draw_object(draw, obj, side, fill=number)
    centres = ((np.arange(grid) + 0.5) * side / grid).astype(int)
    which = np.asarray(mask)[centres[:, None], centres[None, :]].reshape(-1)
    colour_of = np.array([0] + [1 + spec.colors.index(o.color) for o in objects], dtype=np.int64)
    shape_of = np.array([0] + [1 + spec.shapes.index(o.shape) for o in objects], dtype=np.int64)
    return colour_of[which], shape_of[which]
