"""Small stand-in evaluation sets made from the built-in shapes images, in the layouts users bring.

* an imagefolder (one sub-folder per class, like an ImageNet val folder),
* a Karpathy split json with image files (like ``dataset_coco.json`` + ``val2014/``),
* an XM3600-style parquet: one row per (image, language) sharing an image id.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

from siglip_lightning.data.synthetic import ShapesSpec, make_pair, make_zeroshot_example

SPEC = ShapesSpec(image_size=32, num_colors=4, num_shapes=3)


def make_imagefolder(root: Path, per_class: int = 2) -> Path:
    """``root/<class name>/<i>.png`` ("blue circle", ...): labels come from the folder names."""
    for index in range(per_class * len(SPEC.class_names)):
        image, label = make_zeroshot_example(SPEC, index)
        folder = root / SPEC.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:05d}.png").write_bytes(image)
    return root


def make_wnid_folder(root: Path, num_classes: int = 1000) -> Path:
    """An ImageNet-val-like layout: ``root/n00000000/... n00000999/``, one image in each."""
    for index in range(num_classes):
        folder = root / f"n{index:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ILSVRC2012_val.png").write_bytes(make_zeroshot_example(SPEC, index)[0])
    return root


def _captions(caption: str) -> List[str]:
    return [caption, f"a picture of {caption}", f"{caption}, on a dark background"]


def make_karpathy_json(root: Path, num_test: int = 24, num_train: int = 4) -> Path:
    """``root/dataset_coco.json`` and ``root/val2014/*.png``; the first ``num_train`` images are train."""
    (root / "val2014").mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(num_train + num_test):
        image, caption = make_pair(SPEC, "validation", index)
        filename = f"img_{index:05d}.png"
        (root / "val2014" / filename).write_bytes(image)
        images.append({"filepath": "val2014", "filename": filename, "imgid": index, "cocoid": 1000 + index,
                       "split": "train" if index < num_train else "test",
                       "sentences": [{"raw": c, "tokens": c.split()} for c in _captions(caption)]})
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def make_multilingual_parquet(root: Path, num_images: int = 16) -> Path:
    """Rows (image, caption, image_id, language): 'en' captions and 'xx' ones (words reversed)."""
    import datasets

    rows = {"image": [], "caption": [], "image_id": [], "language": []}
    for index in range(num_images):
        image, caption = make_pair(SPEC, "validation", 100 + index)
        for language, text in (("en", caption), ("xx", " ".join(reversed(caption.split())))):
            rows["image"].append({"bytes": image, "path": None})
            rows["caption"].append([text, f"{text} ."])
            rows["image_id"].append(f"id{index}")
            rows["language"].append(language)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string")),
                                  "image_id": datasets.Value("string"), "language": datasets.Value("string")})
    root.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / "test-00000-of-00001.parquet"))
    return root
