"""A Karpathy split json (``dataset_coco.json``, ``dataset_flickr30k.json``) as training data.

``{"images": [{"filepath", "filename", "split", "sentences": [{"raw"}], "imgid"...}]}`` with the
image files next to it (``<json folder>/<filepath>/<filename>``). Splits: ``train`` is train +
restval (the usual 113k COCO training images), ``validation`` is val, ``test`` is test. Each
example has ``image`` (the file path), ``text`` (the list of its captions: one is drawn per
visit) and ``id`` (``cocoid`` / ``imgid``). The images are cut into shards of ``SHARD_SIZE`` so
ranks and workers split them like any sharded source.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterator, List

import datasets

SHARD_SIZE = 1024
SPLITS = {"train": ("train", "restval"), "validation": ("val",), "test": ("test",)}


def is_karpathy(path: str) -> bool:
    """A local ``.json`` file whose top level is ``{"images": [... "sentences" ...]}`` (peeks at the start)."""
    if not (path.endswith(".json") and os.path.isfile(path)):
        return False
    with open(path, encoding="utf-8") as f:
        head = f.read(4096)
    return head.lstrip().startswith("{") and '"images"' in head and '"sentences"' in head


def _rows(chunks: List[List[dict]]) -> Iterator[dict]:
    for chunk in chunks:
        yield from chunk


def karpathy_splits(path: str) -> Dict[str, datasets.IterableDataset]:
    with open(path, encoding="utf-8") as f:
        images = json.load(f)["images"]
    root = os.path.dirname(os.path.abspath(path))
    rows: Dict[str, List[dict]] = {name: [] for name in SPLITS}
    for index, image in enumerate(images):
        for name, members in SPLITS.items():
            if image.get("split", "train") in members:
                rows[name].append({
                    "image": os.path.join(root, image.get("filepath", ""), image["filename"]),
                    "text": [s["raw"] for s in image.get("sentences", []) if s.get("raw")],
                    "id": int(image.get("cocoid", image.get("imgid", index))),
                })
    features = datasets.Features({"image": datasets.Value("string"), "text": datasets.Sequence(datasets.Value("string")),
                                  "id": datasets.Value("int64")})
    out = {}
    for name, split_rows in rows.items():
        if split_rows:
            chunks = [split_rows[i:i + SHARD_SIZE] for i in range(0, len(split_rows), SHARD_SIZE)]
            out[name] = datasets.IterableDataset.from_generator(_rows, gen_kwargs={"chunks": chunks},
                                                                features=features)
    return out
