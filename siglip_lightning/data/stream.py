"""Turn a stream of raw examples into model inputs, skipping (and counting) bad samples.

Every worker's stream is a pure function of (seed, epoch, rank, worker): its slot of shards
(:mod:`~siglip_lightning.data.shards`), a seeded shuffle buffer over raw (undecoded) examples, then
decoding. Each sample carries its position in that order, so a resumed worker replays the raw
examples up to the saved position without decoding them and goes on exactly where it stopped.
Random choices (caption from a list, augmentation) are seeded by the position too.
"""
from __future__ import annotations

import copy
import inspect
import random
import warnings
from collections import Counter
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import IterableDataset

from siglip_lightning.data.captions import CaptionFields, lookup
from siglip_lightning.data.decode import (  # noqa: F401  (decode_image, open_image: re-exported for callers)
    MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, SKIP_REASONS, BadSample, check_caption, decode_image, is_embedding,
    load_checked, open_image,
)
from siglip_lightning.data.regions import collate_regions, region_sample
from siglip_lightning.data.shards import Slot, plan_slot
from siglip_lightning.data.sources import iter_shard
from siglip_lightning.errors import UserInputError

_GUARD_AFTER = 50  # examples a worker reads before the bad-fraction guard may stop the run


_UNREADABLE = {"__shard_unreadable__": True}  # marks a shard that failed part-way, in the raw order


class LazyRandom:
    """``random.Random(seed)``, seeded on first use: most samples (cached embeddings, one caption, no
    augmentation) draw nothing, and seeding a Mersenne Twister costs ~4 us, a tenth of their decode."""

    __slots__ = ("_seed", "_rng")

    def __init__(self, seed: int) -> None:
        self._seed, self._rng = seed, None

    def __getattr__(self, name: str) -> Any:  # only for what the slots do not hold: random.Random's API
        if self._rng is None:
            self._rng = random.Random(self._seed)
        return getattr(self._rng, name)


def shuffled(items: Iterable[Any], buffer_size: int, rng: random.Random) -> Iterator[Any]:
    """A seeded shuffle buffer: deterministic for a given input order and rng."""
    buffer: List[Any] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        k = rng.randrange(buffer_size)
        buffer[k], item = item, buffer[k]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class Caption:
    """A caption waiting for its ids: :class:`PairStream` tokenizes the captions of consecutive cheap samples
    (cached embeddings) in one tokenizer call, which halves their data time (a call per caption cost a
    tensor and the tokenizer's per-call work for ~20 ids)."""

    __slots__ = ("text", "tokenizer")

    def __init__(self, text: str, tokenizer: Callable[[List[str]], torch.Tensor]) -> None:
        self.text, self.tokenizer = text, tokenizer


_TOKENIZE_EVERY = 64  # captions tokenized per call; samples wait at most this many decodes


def tokenized(samples: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """``samples`` with each :class:`Caption` replaced by its ids (one tokenizer call per tokenizer)."""
    waiting: Dict[int, List[Dict[str, Any]]] = {}
    for sample in samples:
        waiting.setdefault(id(sample["text"].tokenizer), []).append(sample)
    for group in waiting.values():
        ids = group[0]["text"].tokenizer([s["text"].text for s in group])
        for sample, row in zip(group, ids):
            sample["text"] = row
    return samples


class PairStream(IterableDataset):
    """Wraps a streaming HF dataset; yields ``{"image", "text", "skipped", "_pos"[, "id"]}``.

    ``skipped`` counts the bad samples dropped since the previous yielded one, by reason, so that
    the counts travel with the batches out of DataLoader workers and can be logged.

    Args:
        source: a ``datasets.IterableDataset`` (all shards of one split).
        image_column: column holding the images.
        text_column: column holding the captions (a string or a list of strings), or
            :class:`~siglip_lightning.data.captions.CaptionFields` (json fields, several with odds).
        image_transform: PIL image -> tensor; may take ``rng=`` for augmentation.
        tokenizer: list of captions -> ``[n, L]`` ids.
        seed: base seed of shard order, shuffle buffer, caption choice and augmentation.
        shuffle_buffer: examples in each worker's shuffle buffer (0: file order, shards unshuffled).
        rank: this process's rank among ``world_size``.
        world_size: data-parallel processes.
        holdout: ``(k, heldout)``: the k-th examples of each shard form the held-out set; ``heldout``
            selects them (validation) or the rest (training). None: no hold-out.
        id_column: column copied to ``sample["id"]`` (None: none).
        regions_column: column of regions (boxes + captions, ``data/regions.py``): one is drawn per sample
            into ``region_box`` / ``region_text`` / ``has_region`` (None: none).
        min_image_side: images with a smaller side are skipped.
        max_image_pixels: images with more pixels are skipped (before decoding).
        max_skip_fraction: a worker that has skipped more than this fraction of at least 50 samples
            stops the run with an error (the data is mostly bad).
        image_root: folder that relative image paths in the image column are relative to.
    """

    def __init__(
        self,
        source: Any,
        image_column: str,
        text_column: str,
        image_transform: Callable[..., torch.Tensor],
        tokenizer: Callable[[List[str]], torch.Tensor],
        seed: int = 0,
        shuffle_buffer: int = 0,
        rank: int = 0,
        world_size: int = 1,
        holdout: Optional[Tuple[int, bool]] = None,
        id_column: Optional[str] = None,
        min_image_side: int = MIN_IMAGE_SIDE,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        max_skip_fraction: float = 0.5,
        image_root: Optional[str] = None,
        regions_column: Optional[str] = None,
    ) -> None:
        self.source = source
        self.image_column = image_column
        self.text_column = text_column
        self.captions = text_column if isinstance(text_column, CaptionFields) else CaptionFields(text_column)
        self.image_transform = image_transform
        self.tokenizer = tokenizer
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self.holdout = holdout
        self.id_column = id_column
        self.min_image_side, self.max_image_pixels = min_image_side, max_image_pixels
        self.max_skip_fraction = max_skip_fraction
        self.image_root = image_root
        self.regions_column = regions_column
        self._transform_takes_rng = "rng" in inspect.signature(image_transform).parameters
        self.epoch = 0
        self.start_positions: Dict[int, int] = {}
        self.worker_offset = 0
        self.exclude: frozenset = frozenset()
        self.batches_done = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_from(self, positions: Dict[int, int], worker_offset: int = 0, exclude: frozenset = frozenset(),
                    batches_done: int = 0) -> None:
        """Start each (logical) worker after ``positions[worker]`` samples of its order; loader worker
        i plays logical worker ``(i + worker_offset) % num_workers`` so batches keep their round-robin order.
        ``exclude``: keys of examples already read in this epoch under another layout (elastic resume).
        ``batches_done``: batches of this pass that already reached the model (numbers the next ones)."""
        self.start_positions = {int(k): int(v) for k, v in positions.items()}
        self.worker_offset = worker_offset
        self.exclude = frozenset(exclude)
        self.batches_done = int(batches_done)

    # --- the raw order ------------------------------------------------------------------------------
    def slot(self, worker: int, num_workers: int) -> Slot:
        return plan_slot(self.source.num_shards, self.rank, self.world_size, worker, num_workers,
                         self.seed, self.epoch, shuffle=self.shuffle_buffer > 0)

    def with_layout(self, rank: int, world_size: int) -> "PairStream":
        """A copy that reads as ``rank`` of ``world_size`` (to replay another layout's order)."""
        other = copy.copy(self)
        other.rank, other.world_size = rank, world_size
        return other

    def raw_examples(self, worker: int, num_workers: int) -> Iterator[Tuple[tuple, Dict[str, Any]]]:
        """``(key, raw example)`` of this worker in their final order, shuffle buffer included; the key
        ``(shard, index in shard)`` names the example whatever the layout. Keys in ``exclude`` are left out."""
        slot = self.slot(worker, num_workers)
        exclude = self.exclude

        def in_file_order():
            for shard in slot.shards:
                kept = 0
                try:
                    for r, example in enumerate(iter_shard(self.source, shard)):
                        if self.holdout is not None:
                            k, heldout = self.holdout
                            if (r % k == k - 1) != heldout:
                                continue
                        j, kept = kept, kept + 1
                        if slot.keeps(j) and (shard, r) not in exclude:
                            yield (shard, r), example
                except UserInputError:  # e.g. a remote shard that failed every retry: never skipped silently
                    raise
                except Exception as err:  # a corrupt or truncated file: keep what was read, go on
                    warnings.warn(f"skipping the rest of data shard {shard}: {type(err).__name__}: {err}")
                    yield (shard, -1), _UNREADABLE

        if self.shuffle_buffer <= 0:
            return in_file_order()
        rng = random.Random(hash((self.seed, self.epoch, self.rank, worker, 1)))
        return shuffled(in_file_order(), self.shuffle_buffer, rng)

    def shard_counts(self) -> list:
        """Shards of each source: a checkpoint's positions mean nothing if these changed."""
        return [self.source.num_shards]

    def read_retries(self) -> int:
        """Retries of remote reads made by this process so far."""
        return getattr(self.source, "retries", 0)

    def decode(self, key: tuple, example: Dict[str, Any], rng: random.Random) -> Dict[str, Any]:
        return self.make_sample(example, rng)

    # --- decoding -----------------------------------------------------------------------------------
    def make_sample(self, example: Dict[str, Any], rng: random.Random) -> Dict[str, Any]:
        """Model inputs from one raw example, or :class:`BadSample`."""
        if example.get("__shard_unreadable__"):
            raise BadSample("shard_unreadable")
        caption = check_caption(self.captions.value(example, rng), rng)
        raw = example.get(self.image_column)
        if is_embedding(raw):  # a precomputed image embedding (SigLiT cache): nothing to decode
            # through numpy: a third of the time of torch.as_tensor on a list of floats
            # the caption is tokenized later with its neighbours' (one tokenizer call per chunk, see __iter__)
            sample = {"image": torch.from_numpy(np.array(raw, dtype=np.float32)), "text": Caption(caption, self.tokenizer)}
            if self.id_column is not None:
                sample["id"] = lookup(example, self.id_column)
            return sample
        size = getattr(self.image_transform, "image_size", 0)
        image = load_checked(example.get(self.image_column), size, self.min_image_side, self.max_image_pixels,
                             self.image_root)
        try:
            pixels = self.image_transform(image, rng=rng) if self._transform_takes_rng else self.image_transform(image)
        except Exception:  # e.g. a colour mode with no conversion to RGB
            raise BadSample("image_unconvertible") from None
        sample = {"image": pixels, "text": self.tokenizer([caption])[0]}
        if self.id_column is not None:
            sample["id"] = lookup(example, self.id_column)
        if self.regions_column is not None:  # drawn after the image's augmentation: its draws are unchanged
            sample.update(region_sample(example.get(self.regions_column), self.tokenizer, rng,
                                        sample["text"].shape[0]))
        return sample

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        num_workers = info.num_workers if info else 1
        worker = ((info.id if info else 0) + self.worker_offset) % num_workers
        start = self.start_positions.get(worker, 0)
        # Loader worker i hands out batches i, i + W, i + 2W, ... of this pass (round-robin): with the
        # batches already done, the k-th sample this worker yields belongs to the pass's batch
        # first + (k // batch size) * W, the same step on every rank (see :func:`batch_number`).
        first = getattr(self, "batches_done", 0) + (worker - self.worker_offset) % num_workers
        yielded = 0
        skipped: Counter = Counter()  # since the last yielded sample
        totals: Counter = Counter()  # this pass, for the error message
        seen = bad = 0
        waiting: List[Dict[str, Any]] = []  # samples whose caption is not tokenized yet
        retries = self.read_retries()
        for position, (key, example) in enumerate(self.raw_examples(worker, num_workers)):
            if position < start:  # resume: replay the order without decoding
                continue
            rng = LazyRandom(hash((self.seed, self.epoch, self.rank, worker, position)))
            seen += 1
            try:
                sample = self.decode(key, example, rng)
            except BadSample as skip:
                skipped[skip.reason] += 1
                totals[skip.reason] += 1
                bad += 1
                sample = None
            if seen >= _GUARD_AFTER and bad > self.max_skip_fraction * seen:
                raise UserInputError(self._mostly_bad(seen, bad, totals))
            if sample is None:
                continue
            sample["skipped"] = dict(skipped)
            sample["_pos"] = (worker, position + 1)
            sample["_order"] = (self.epoch, first, num_workers, yielded)
            yielded += 1
            now = self.read_retries()
            sample["read_retries"], retries = now - retries, now
            skipped.clear()
            if isinstance(sample["text"], Caption):  # yielded in order once its chunk is tokenized
                waiting.append(sample)
                if len(waiting) >= _TOKENIZE_EVERY:
                    yield from tokenized(waiting)
                    waiting = []
                continue
            yield from tokenized(waiting)
            waiting = []
            yield sample
        yield from tokenized(waiting)
        if seen >= 8 and bad == seen:
            raise UserInputError(self._mostly_bad(seen, bad, totals))

    def _mostly_bad(self, seen: int, bad: int, skipped: Counter) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items()))
        return (f"the data is mostly bad: {bad} of {seen} samples read by one worker were skipped ({reasons}); "
                f"check data.image_column={self.image_column!r} and data.text_column={self.text_column!r}, "
                f"or raise data.max_skip_fraction (now {self.max_skip_fraction})")


def batch_number(samples: List[Dict[str, Any]]) -> Optional[Tuple[int, int]]:
    """``(epoch, index of the batch in the epoch's pass)`` of a full batch of one worker's samples: the
    same on every rank at the same step, whatever each rank skipped, and the same after a resume.
    None for samples that carry no order (a stream that is not a :class:`PairStream`)."""
    order = samples[-1].get("_order")
    if order is None:
        return None
    epoch, first, num_workers, last = order
    return epoch, first + (last // len(samples)) * num_workers


def collate_pairs(samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack a worker's samples; skip counts are summed, ``_stream`` is the last sample's position."""
    skipped: Counter = Counter()
    for sample in samples:
        skipped.update(sample["skipped"])
    batch: Dict[str, Any] = {
        "image": torch.stack([s["image"] for s in samples]),
        "text": torch.stack([s["text"] for s in samples]),
        "skipped": {reason: skipped.get(reason, 0) for reason in SKIP_REASONS},
    }
    if "read_retries" in samples[0]:
        batch["read_retries"] = sum(s["read_retries"] for s in samples)
    if "id" in samples[0]:
        ids = [s["id"] for s in samples]
        batch["id"] = torch.tensor(ids) if all(isinstance(i, int) for i in ids) else ids
    collate_regions(samples, batch)
    if "_pos" in samples[-1]:
        batch["_stream"] = samples[-1]["_pos"]
    return batch
