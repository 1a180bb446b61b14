"""The regions column: the built-in data writes each shape's box and phrase; batches carry one region per example."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from siglip_lightning import ImageTextDataModule, ShapesSpec
from siglip_lightning.data.shapes_render import COLORS
from siglip_lightning.data.synthetic import make_example, make_pair
from siglip_lightning.errors import UserInputError

SPEC = dict(num_train=64, num_validation=16, zeroshot_per_class=1, num_shards=2, image_size=32, regions=True)


def test_each_box_frames_its_shape_in_the_image():
    spec = ShapesSpec(**SPEC)
    for index in range(10):
        png, caption, regions = make_example(spec, "train", index)
        assert (png, caption) == make_pair(spec, "train", index)
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        h, w, _ = pixels.shape
        colours = [r["caption"].split()[2] for r in regions]
        for region in regions:
            if colours.count(region["caption"].split()[2]) > 1:
                continue  # two shapes of one colour: their pixels cannot be told apart here
            colour = np.array(COLORS[region["caption"].split()[2]])
            near = np.abs(pixels - colour).sum(-1) < 40  # pixels of that colour (anti-aliased edges excluded)
            x0, y0, x1, y1 = region["box"]
            inside = near[int(y0 * h):int(np.ceil(y1 * h)), int(x0 * w):int(np.ceil(x1 * w))].sum()
            assert near.sum() > 0 and inside >= 0.9 * near.sum(), (index, region)


def test_batches_carry_one_true_region_per_example(tmp_path):
    dm = ImageTextDataModule(batch_size=8, num_workers=0, shuffle_buffer=0, builtin=ShapesSpec(**SPEC), image_size=16,
                             context_length=8, vocab_size=300, tokenizer_type="gemma", cache_dir=str(tmp_path),
                             regions_column="regions")
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["region_box"].shape == (8, 4) and batch["region_text"].shape == (8, 8) and batch["has_region"].all()
    for row, index in enumerate(batch["id"].tolist()):
        _, _, regions = make_example(ShapesSpec(**SPEC), "train", index)
        match = [r for r in regions if torch.allclose(torch.tensor(r["box"]), batch["region_box"][row])]
        assert match and torch.equal(dm.tokenizer([match[0]["caption"]])[0], batch["region_text"][row])
    with pytest.raises(UserInputError, match="regions_column"):
        ImageTextDataModule(regions_column="regions", augment=True)
