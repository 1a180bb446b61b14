"""Weighted mixtures of several sources (``data.sources``), drawn per worker at the raw-example level.

Each (rank, worker) reads its own slot of every source (the usual sharding, per source) and, for
each next example, draws the source with a seeded generator of (seed, epoch, rank, worker): the
mixed order is a pure function of those, like a single source's, so exact and elastic resume work
unchanged (keys carry the source's index). Draws are of raw examples: a source with many bad
samples contributes slightly less than its weight to the batches. The first source of a worker to
run out ends that worker's epoch, so no example is repeated within an epoch and the weights hold
to the end; size the sources so that the small ones do not run out early (a source's share of an
epoch is about ``weight x epoch length``).
"""
from __future__ import annotations

import bisect
import copy
import itertools
import random
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from pathlib import Path

from siglip_lightning.data.captions import CaptionFields, resolve_caption_fields
from siglip_lightning.data.sources import (
    ID_COLUMNS, IMAGE_COLUMNS, TEXT_COLUMNS, column_names, pick_column,
)
from siglip_lightning.data.stream import PairStream
from siglip_lightning.errors import UserInputError


@dataclass
class SourceSpec:
    """One source of a mixture.

    Args:
        path: as ``data.path`` (local or remote shards, brace patterns, a folder, a Hub name, a
            Karpathy json).
        weight: relative share of the examples drawn from this source.
        image_column: column holding images (default: the first of image, img, jpg, ...).
        text_column: caption column, ``json.field`` path, or ``{field: probability}``.
        id_column: column passed through as ``batch["id"]``.
    """

    path: str
    weight: float = 1.0
    image_column: Optional[str] = None
    text_column: Union[str, Dict[str, float], None] = None
    id_column: Optional[str] = None


def source_specs(path: str, sources: Optional[List[Any]], image_column: Optional[str], text_column: Any,
                 id_column: Optional[str], builtin: str) -> List[SourceSpec]:
    """The sources of the datamodule: ``data.sources``, else the one ``data.path`` with its columns."""
    if sources:
        if path != builtin:
            raise UserInputError("set data.path or data.sources, not both")
        specs = [s if isinstance(s, SourceSpec) else SourceSpec(**s) for s in sources]
        check_weights([s.weight for s in specs])
    else:
        specs = [SourceSpec(path, 1.0, image_column, text_column, id_column)]
    for spec in specs:
        local = spec.path
        if local.startswith((".", "/", "~")) and not any(c in local for c in "*?[{:") and not Path(local).expanduser().exists():
            raise UserInputError(f"data path not found: {local!r} (data.path)")
    return specs


def resolve_columns(splits: Dict[str, Any], spec: SourceSpec) -> Tuple[str, CaptionFields, Optional[str]]:
    """(image column, caption fields, id column) of a source, checked against its columns."""
    if "train" not in splits:
        raise UserInputError(f"no train split in {spec.path!r}: found {sorted(splits)}")
    columns = column_names(splits["train"])
    image_column = pick_column(columns, spec.image_column, IMAGE_COLUMNS, "image", "data.image_column")
    captions = resolve_caption_fields(columns, spec.text_column, TEXT_COLUMNS)
    if spec.id_column is not None and spec.id_column.split(".", 1)[0] not in columns:
        pick_column(columns, spec.id_column, (), "id", "data.id_column")  # the error naming the columns
    return image_column, captions, spec.id_column or next((c for c in ID_COLUMNS if c in columns), None)


def sample_captions(train: Any, spec: SourceSpec, count: int) -> Iterator[Any]:
    """Up to ``count`` caption values of a source (its caption columns only: no image bytes read)."""
    fields = resolve_caption_fields(column_names(train), spec.text_column, TEXT_COLUMNS)
    rng = random.Random(0)
    for example in itertools.islice(train.select_columns(fields.columns()), max(1, count)):
        yield fields.value(example, rng)


def check_weights(weights: Sequence[float]) -> List[float]:
    if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserInputError(f"data.sources weights must be >= 0 with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    return [w / total for w in weights]


def draw_sources(weights: Sequence[float], rng: random.Random) -> Iterator[int]:
    """Endless source indices, each drawn with probability ``weights[i]`` (normalised)."""
    cumulative = list(itertools.accumulate(check_weights(weights)))
    cumulative[-1] = 1.0 + 1e-12  # no index past the end from rounding
    while True:
        yield bisect.bisect_right(cumulative, rng.random())


class MixedStream(PairStream):
    """Interleaves the raw orders of several :class:`PairStream` (one per source) with weights.

    Args:
        parts: one stream per source (same seed, rank and world size), each with its own columns.
        weights: relative share of each part.
        seed: seed of the source draws (combined with epoch, rank and worker).
        rank: this process's rank.
        world_size: data-parallel processes.
        max_skip_fraction: as :class:`PairStream`.
    """

    def __init__(self, parts: List[PairStream], weights: Sequence[float], seed: int = 0, rank: int = 0,
                 world_size: int = 1, max_skip_fraction: float = 0.5) -> None:
        if len(parts) != len(weights):
            raise ValueError("one weight per part")
        self.parts, self.weights = list(parts), check_weights(weights)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.max_skip_fraction = max_skip_fraction
        self.image_column = [p.image_column for p in parts]
        self.text_column = [p.text_column for p in parts]
        self.epoch, self.start_positions, self.worker_offset, self.exclude = 0, {}, 0, frozenset()
        self.batches_done = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for part in self.parts:
            part.set_epoch(epoch)

    def resume_from(self, positions: Dict[int, int], worker_offset: int = 0, exclude: frozenset = frozenset(),
                    batches_done: int = 0) -> None:
        super().resume_from(positions, worker_offset, exclude, batches_done)
        for index, part in enumerate(self.parts):
            part.resume_from({}, 0, frozenset(key[1:] for key in self.exclude if key[0] == index))

    def with_layout(self, rank: int, world_size: int) -> "MixedStream":
        other = copy.copy(self)
        other.rank, other.world_size = rank, world_size
        other.parts = [part.with_layout(rank, world_size) for part in self.parts]
        return other

    def raw_examples(self, worker: int, num_workers: int) -> Iterator[Tuple[tuple, Dict[str, Any]]]:
        orders = [part.raw_examples(worker, num_workers) for part in self.parts]
        rng = random.Random(hash((self.seed, self.epoch, self.rank, worker, 2)))
        for index in draw_sources(self.weights, rng):
            item = next(orders[index], None)
            if item is None:  # the first source to run out ends this worker's epoch
                return
            key, example = item
            yield (index, *key), example

    def decode(self, key: tuple, example: Dict[str, Any], rng: random.Random) -> Dict[str, Any]:
        return self.parts[key[0]].decode(key[1:], example, rng)

    def read_retries(self) -> int:
        return sum(part.read_retries() for part in self.parts)

    def shard_counts(self) -> list:
        return [count for part in self.parts for count in part.shard_counts()]
