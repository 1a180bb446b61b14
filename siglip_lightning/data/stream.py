"""Turn a stream of raw examples into model inputs, skipping (and counting) bad samples."""
from __future__ import annotations

import io
import random
from collections import Counter
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from PIL import Image
from torch.utils.data import IterableDataset

SKIP_REASONS = ("image_undecodable", "image_too_small", "caption_missing")
MIN_IMAGE_SIDE = 4


def decode_image(value: Any) -> Image.Image:
    """A PIL image from what a dataset column may hold: PIL, bytes, {'bytes', 'path'} or a path."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, dict) and value.get("bytes") is not None:
        image = Image.open(io.BytesIO(value["bytes"]))
    elif isinstance(value, dict) and value.get("path"):
        image = Image.open(value["path"])
    elif isinstance(value, str):
        image = Image.open(value)
    else:
        raise ValueError(f"no image in a value of type {type(value).__name__}")
    image.load()  # decode now, so truncated files fail here rather than in the transform
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


class PairStream(IterableDataset):
    """Wraps a (sharded, shuffled) HF iterable dataset; yields ``{"image", "text", "skipped"}``.

    ``skipped`` counts the bad samples dropped since the previous yielded one, by reason, so that
    the counts travel with the batches out of DataLoader workers and can be logged.
    """

    def __init__(
        self,
        source: Any,
        image_column: str,
        text_column: str,
        image_transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[List[str]], torch.Tensor],
        seed: int = 0,
    ) -> None:
        self.source = source
        self.image_column = image_column
        self.text_column = text_column
        self.image_transform = image_transform
        self.tokenizer = tokenizer
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        rng = random.Random(hash((self.seed, self.epoch, info.id if info else 0)))
        skipped: Counter = Counter()
        for example in self.source:
            caption = pick_caption(example.get(self.text_column), rng)
            if caption is None:
                skipped["caption_missing"] += 1
                continue
            raw = example.get(self.image_column)
            if is_embedding(raw):  # a precomputed image embedding (SigLiT cache): nothing to decode
                yield {"image": torch.as_tensor(raw, dtype=torch.float32), "text": self.tokenizer([caption])[0],
                       "skipped": dict(skipped)}
                skipped.clear()
                continue
            try:
                image = decode_image(raw)
            except Exception:  # any decoder error means the same thing here: unusable bytes
                skipped["image_undecodable"] += 1
                continue
            if min(image.size) < MIN_IMAGE_SIDE:
                skipped["image_too_small"] += 1
                continue
            yield {
                "image": self.image_transform(image),
                "text": self.tokenizer([caption])[0],
                "skipped": dict(skipped),
            }
            skipped.clear()


def collate_pairs(samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    skipped: Counter = Counter()
    for sample in samples:
        skipped.update(sample["skipped"])
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "text": torch.stack([s["text"] for s in samples]),
        "skipped": {reason: skipped.get(reason, 0) for reason in SKIP_REASONS},
    }
