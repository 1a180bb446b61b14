"""The spatial hard-negative test: the formula, and the whole callback on the generator's own images with a
model that reads the relation off the pixels (must score 1.0) or ignores them (must score about chance)."""
from __future__ import annotations

import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from siglip_lightning.data.probe_scenes import OPPOSITE, relation_scene
from siglip_lightning.data.shapes_render import COLORS
from siglip_lightning.data.synthetic import RELATIONS, ShapesSpec
from siglip_lightning.eval.base import EvalContext
from siglip_lightning.eval.spatial import SpatialHardNegatives, hard_negative_accuracy

SPEC = ShapesSpec(image_size=64)
RELS = list(RELATIONS)


def test_hard_negative_accuracy_matches_a_loop():
    gen = torch.Generator().manual_seed(0)
    images, texts = torch.randn(200, 8, generator=gen), torch.randn(200, 3, 8, generator=gen)
    expected = np.mean([float(texts[i, 0] @ images[i] > max(texts[i, 1] @ images[i], texts[i, 2] @ images[i]))
                        for i in range(200)])
    assert hard_negative_accuracy(images, texts) == pytest.approx(expected)
    texts[:, 0] = images * 10  # the true caption made the best match of every image
    assert hard_negative_accuracy(images, texts) == 1.0
    texts[:, 1] = texts[:, 0]  # a tie is not a win
    assert hard_negative_accuracy(images, texts) == 0.0


def _relation_slot(first: str, relation: str, second: str) -> int:
    colors = SPEC.colors
    return (colors.index(first) * len(RELS) + RELS.index(relation)) * len(colors) + colors.index(second)


class PixelOracle(torch.nn.Module):
    """Embeds an image as the (colour, relation, colour) facts its pixels show, and a caption as the fact it
    states: a model that knows where each colour is. ``ignore_pixels``: a hash of the caption instead."""

    def __init__(self, ignore_pixels: bool = False) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.size = len(SPEC.colors) ** 2 * len(RELS)
        self.ignore_pixels, self.texts = ignore_pixels, []

    @property
    def device(self):
        return self.anchor.device

    def tokenize(self, texts):
        self.texts += texts
        return torch.arange(len(self.texts) - len(texts), len(self.texts))

    def encode_text(self, ids):
        out = torch.zeros(len(ids), self.size)
        for row, i in enumerate(ids.tolist()):
            words = self.texts[i].split()
            if self.ignore_pixels:
                out[row] = torch.randn(self.size, generator=torch.Generator().manual_seed(zlib.crc32(self.texts[i].encode())))
            else:  # "a <size> <colour> <shape> <relation 1-2 words> a <size> <colour> <shape>"
                out[row, _relation_slot(words[2], " ".join(words[4:-4]), words[-2])] = 1.0
        return out

    def encode_image(self, images):
        out = torch.zeros(len(images), self.size)
        for row, image in enumerate(images.numpy()):
            centres = {}
            for name in SPEC.colors:
                near = np.abs(image.astype(int) - np.array(COLORS[name])).sum(-1) < 40
                if near.sum() > 10:
                    ys, xs = near.nonzero()
                    centres[name] = (xs.mean(), ys.mean())
            (a, (ax, ay)), (b, (bx, by)) = sorted(centres.items())[:2]
            dx, dy = ax - bx, ay - by
            relation = ("left of" if dx < 0 else "right of") if abs(dx) > abs(dy) else ("above" if dy < 0 else "below")
            out[row, _relation_slot(a, relation, b)] = 1.0  # the same fact said both ways round
            out[row, _relation_slot(b, OPPOSITE[relation], a)] = 1.0
        return out


def _measure(model: PixelOracle, num_images: int) -> dict:
    datamodule = SimpleNamespace(builtin_spec=SPEC, specs=[SimpleNamespace(path="builtin")])
    context = EvalContext(model.tokenize, lambda image: torch.from_numpy(np.asarray(image.convert("RGB")).copy()),
                          datamodule)
    return SpatialHardNegatives(num_images=num_images, batch_size=64).compute(model, context)


def test_a_model_that_sees_the_relation_scores_one():
    metrics = _measure(PixelOracle(), 96)
    assert metrics == {"all": 1.0, "relation": 1.0, "colour": 1.0, "chance": pytest.approx(1 / 3)}


def test_a_model_blind_to_the_image_scores_about_chance():
    metrics = _measure(PixelOracle(ignore_pixels=True), 400)
    assert abs(metrics["all"] - 1 / 3) < 0.08
    assert abs(metrics["relation"] - 0.5) < 0.08 and abs(metrics["colour"] - 0.5) < 0.08


def test_negatives_are_false_of_the_scene_and_differ_from_the_caption():
    for index in range(50):
        scene = relation_scene(SPEC, index)
        first, second = scene.objects
        assert first.color != second.color
        assert len({scene.caption, *scene.negatives.values()}) == 3
        relation = next(r for r in RELS if f" {r} " in scene.caption)
        dx, dy = RELATIONS[relation]  # the caption's relation is where the generator put the first shape
        assert np.sign(first.cx - second.cx) == dx or dx == 0
        assert np.sign(first.cy - second.cy) == dy or dy == 0
        assert f" {OPPOSITE[relation]} " in scene.negatives["relation"]
        assert scene.negatives["colour"].split()[2] == second.color
