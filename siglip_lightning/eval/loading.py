"""Decode and embed this rank's share of an evaluation set's images, in DataLoader workers.

A source is any iterable of ``(position, raw image, payload)``; the raw image is what
:func:`decode_image` reads (bytes, ``{"bytes", "path"}``, PIL or a file path) and the payload an
integer carried along (the label in zero-shot classification). A raw "image" that is a list of numbers
is a cached embedding (``cache-embeddings``): it is passed to the model as it is, undecoded. Every worker walks the source
and decodes only the positions it owns, so the share is exact with any number of ranks/workers.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

import datasets
import torch
from torch.utils.data import DataLoader, IterableDataset

from siglip_lightning.data.naflex import stack_images
from siglip_lightning.data.sources import open_splits
from siglip_lightning.data.stream import decode_image, is_embedding
from siglip_lightning.errors import UserInputError

EVAL_SPLITS = ("test", "validation", "val")


def open_eval_split(path: str, split: Optional[str], where: str) -> datasets.IterableDataset:
    """The split named, else the only one, else test / validation / val, as a stream."""
    splits = open_splits(path)
    if split is not None:
        if split not in splits:
            raise UserInputError(f"{where}: split {split!r} not found in {path!r}; it has splits {sorted(splits)}")
        return splits[split]
    if len(splits) == 1:
        return next(iter(splits.values()))
    for name in EVAL_SPLITS:
        if name in splits:
            return splits[name]
    raise UserInputError(f"{where}: {path!r} has several splits {sorted(splits)} and none is test/validation: "
                         "set split")


class OwnedImages(IterableDataset):
    """Yields ``(position, image tensor, payload)`` for the positions owned by this rank and worker.

    Args:
        source: re-iterable ``(position, raw image, payload)`` triples, in a fixed order.
        transform: PIL image -> tensor (the datamodule's ``eval_transform``).
        rank: this process's rank.
        world: number of processes.
        where: names the data set in error messages.
    """

    def __init__(self, source: Iterable[Tuple[int, Any, int]], transform: Callable, rank: int, world: int,
                 where: str) -> None:
        self.source, self.transform, self.rank, self.world, self.where = source, transform, rank, world, where

    def __iter__(self) -> Iterator[Tuple[int, torch.Tensor, int]]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        slots, slot = self.world * workers, self.rank * workers + worker
        for position, raw, payload in self.source:
            if position % slots != slot:
                continue
            if is_embedding(raw):  # a cached image embedding (SigLiT on cache-embeddings output): as is
                yield position, torch.as_tensor(raw, dtype=torch.float32), payload
                continue
            try:
                image = decode_image(raw)
            except Exception as err:  # an evaluation set with a broken image gives wrong numbers: stop
                raise UserInputError(f"{self.where}: cannot decode the image at position {position}: {err}") from err
            yield position, self.transform(image), payload


def _collate(items: List[Tuple[int, torch.Tensor, int]]):
    positions, images, payloads = zip(*items)
    return torch.tensor(positions), stack_images(images), torch.tensor(payloads)


@torch.no_grad()
def embed_owned_images(module, source: Iterable[Tuple[int, Any, int]], transform: Callable, rank: int, world: int,
                       batch_size: int, num_workers: int, where: str, precision=None):
    """``(positions, features, payloads)`` of this rank's images; features float32 on the module's device."""
    loader = DataLoader(OwnedImages(source, transform, rank, world, where), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate)
    positions, features, payloads = [], [], []
    for batch_positions, images, batch_payloads in loader:
        images = images.to(module.device)
        if precision is not None:
            images = precision.convert_input(images)
        features.append(module.encode_image(images).float())
        positions.append(batch_positions)
        payloads.append(batch_payloads)
    if not features:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, torch.zeros(0, 0, device=module.device), empty
    return torch.cat(positions), torch.cat(features), torch.cat(payloads)


@torch.no_grad()
def embed_owned_texts(module, tokenizer, texts: List[str], rank: int, world: int, batch_size: int):
    """``(positions, features)`` of the texts at positions ``rank, rank + world, ...``."""
    positions = list(range(rank, len(texts), world))
    features = []
    for start in range(0, len(positions), batch_size):
        chunk = positions[start:start + batch_size]
        tokens = tokenizer([texts[p] for p in chunk]).to(module.device)
        features.append(module.encode_text(tokens).float())
    if not features:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, 0, device=module.device)
    return torch.tensor(positions), torch.cat(features)
