"""Tiny image-text datasets in every supported format, and a callback that records batch ids."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from lightning.pytorch import Callback
from PIL import Image

WORDS = ["red", "green", "blue", "circle", "square", "small", "large", "left", "right", "of", "a", "the"]


def image_bytes(seed: int, size: Tuple[int, int] = (20, 20), fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def caption(seed: int) -> str:
    rng = np.random.default_rng(seed + 7)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), size=5))


def pairs(n: int, start: int = 0) -> List[dict]:
    return [{"id": i, "image": image_bytes(i), "text": caption(i)} for i in range(start, start + n)]


def split_sizes(rows: Sequence[dict], sizes: Sequence[int]) -> List[Sequence[dict]]:
    out, at = [], 0
    for size in sizes:
        out.append(rows[at:at + size])
        at += size
    return out


def write_parquet(folder: Path, rows: Sequence[dict], sizes: Sequence[int], split: str = "train") -> Path:
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "id": datasets.Value("int64")})
    for k, chunk in enumerate(split_sizes(rows, sizes)):
        table = {"image": [{"bytes": r["image"], "path": None} for r in chunk],
                 "text": [r["text"] for r in chunk], "id": [r["id"] for r in chunk]}
        datasets.Dataset.from_dict(table, features=features).to_parquet(
            str(folder / f"{split}-{k:05d}-of-{len(sizes):05d}.parquet"))
    return folder


def write_webdataset(folder: Path, rows: Sequence[dict], sizes: Sequence[int], split: str = "train") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, chunk in enumerate(split_sizes(rows, sizes)):
        with tarfile.open(folder / f"{split}-{k:05d}.tar", "w") as tar:
            for r in chunk:
                for ext, data in (("jpg", r["image"]), ("txt", r["text"].encode())):
                    info = tarfile.TarInfo(f"{r['id']:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def write_files(folder: Path, rows: Sequence[dict], kind: str) -> Path:
    """Image files plus ``metadata.jsonl`` (imagefolder), ``pairs.jsonl`` or ``pairs.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    records = []
    for r in rows:
        name = f"images/{r['id']:06d}.jpg"
        (folder / name).write_bytes(r["image"])
        records.append({"file_name" if kind == "imagefolder" else "image": name, "text": r["text"], "id": r["id"]})
    if kind == "imagefolder":
        target = folder / "metadata.jsonl"
        target.write_text("".join(json.dumps(x) + "\n" for x in records))
        return folder
    if kind == "jsonl":
        target = folder / "pairs.jsonl"
        target.write_text("".join(json.dumps(x) + "\n" for x in records))
        return target
    target = folder / "pairs.csv"
    target.write_text("image,text,id\n" + "".join(f"{x['image']},{x['text']},{x['id']}\n" for x in records))
    return target


class RecordIds(Callback):
    """Appends ``[global_step, rank, ids, epoch]`` of every training batch to a jsonl file; may die at a step.

    Args:
        path: file to append to.
        die_at_step: ``os._exit`` right after this many optimizer steps (a killed run).
    """

    def __init__(self, path: str, die_at_step: Optional[int] = None) -> None:
        self.path, self.die_at_step = path, die_at_step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps([trainer.global_step, trainer.global_rank, [int(i) for i in batch["id"]],
                                trainer.current_epoch]) + "\n")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.die_at_step is not None and trainer.global_step >= self.die_at_step:
            import os

            os._exit(17)


def read_ids(path: Path) -> List[list]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
