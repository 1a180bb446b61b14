"""The dense probe: patch labels against the generator's drawing, the linear readout against known answers,
and the callback end to end on a small random tower."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from siglip_lightning.data.probe_scenes import dense_scene, patch_labels
from siglip_lightning.data.shapes_render import COLORS, SceneObject
from siglip_lightning.data.synthetic import ShapesSpec
from siglip_lightning.eval.base import EvalContext
from siglip_lightning.eval.dense_probe import DenseProbe
from siglip_lightning.eval.linear_probe import probe_accuracy
from siglip_lightning.towers.vision import VisionTower

SPEC = ShapesSpec(image_size=32)


def test_a_centred_large_square_covers_the_four_middle_patches():
    colour, shape = patch_labels([SceneObject("red", "square", "large", 0.5, 0.5)], SPEC, grid=4)
    expected = np.zeros((4, 4), dtype=int)
    expected[1:3, 1:3] = 1  # half side 0.85 * 0.30 * 32 = 8.2 px around 16: centres 12 and 20 in, 4 and 28 out
    assert (colour.reshape(4, 4) == expected * (1 + SPEC.colors.index("red"))).all()
    assert (shape.reshape(4, 4) == expected * (1 + SPEC.shapes.index("square"))).all()


def test_a_shape_in_the_top_right_is_labelled_in_row_major_order():
    colour, _ = patch_labels([SceneObject("blue", "circle", "small", 0.85, 0.15)], SPEC, grid=4)
    assert colour.nonzero()[0].tolist() == [3]  # row 0, column 3


def test_labels_agree_with_the_rendered_pixels():
    agree = total = 0
    for index in range(60):
        scene = dense_scene(SPEC, index)
        colour, _ = patch_labels(scene.objects, SPEC, grid=8)
        pixels = np.asarray(Image.open(__import__("io").BytesIO(scene.image)).convert("RGB")).astype(int)
        centres = ((np.arange(8) + 0.5) * 32 / 8).astype(int)  # 4-px patches: the centre is a pixel corner
        for k, label in enumerate(colour):
            around = pixels[centres[k // 8] - 1:centres[k // 8] + 1, centres[k % 8] - 1:centres[k % 8] + 1].reshape(-1, 3)
            if label == 0:
                agree += (around.max(1) <= 80).any()  # the background is drawn in [0, 70)
            else:
                agree += (np.abs(around - np.array(COLORS[SPEC.colors[label - 1]])).sum(1) < 60).any()
            total += 1
    assert agree / total > 0.98  # anti-aliased edges may blend a few pixels


def test_probe_reads_a_linear_code_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    labels = torch.multinomial(torch.tensor([0.7, 0.1, 0.1, 0.05, 0.05]), 3000, replacement=True, generator=gen)
    code = torch.randn(5, 32, generator=gen)
    features = code[labels] + 0.1 * torch.randn(3000, 32, generator=gen)
    coded = probe_accuracy(features[:2000], labels[:2000], features[2000:], labels[2000:], 5)
    assert coded["acc"] > 0.99
    noise = torch.randn(3000, 32, generator=gen)
    blind = probe_accuracy(noise[:2000], labels[:2000], noise[2000:], labels[2000:], 5)
    assert abs(blind["majority"] - float((labels[2000:] == 0).float().mean())) < 1e-6
    assert abs(blind["acc"] - blind["majority"]) < 0.05


def test_callback_runs_on_a_random_tower():
    torch.manual_seed(0)
    module = SimpleNamespace(image_tower=VisionTower(image_size=32, patch_size=8, width=16, layers=1, heads=2),
                             device=torch.device("cpu"), training=False, eval=lambda: None, train=lambda mode: None)
    datamodule = SimpleNamespace(builtin_spec=SPEC, specs=[SimpleNamespace(path="builtin")])
    to_tensor = lambda image: torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)  # noqa: E731
    metrics = DenseProbe(train_images=64, test_images=32, steps=20).compute(module, EvalContext(None, to_tensor, datamodule))
    assert set(metrics) == {"colour", "shape", "colour_majority", "shape_majority"}
    assert metrics["colour_majority"] == metrics["shape_majority"] > 0.4  # both: background
    # a random tower still passes the pixels through linearly enough to beat "always background"
    assert metrics["colour"] > metrics["colour_majority"]


def test_probe_fits_under_inference_mode_as_in_validate():
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():  # `siglip-lightning validate` runs the callbacks so
        labels = torch.randint(0, 3, (600,), generator=gen)
        features = torch.randn(3, 8, generator=gen)[labels] + 0.1 * torch.randn(600, 8, generator=gen)
        result = probe_accuracy(features[:400], labels[:400], features[400:], labels[400:], 3, steps=30)
    assert result["acc"] > 0.95
