"""The built-in dataset: procedural coloured shapes with captions, written as parquet shards.

Each image holds 1..max_objects shapes of several colours, kinds and sizes at several positions;
its caption describes them in words ("a small red circle left of a large blue square"), so there
are tens of thousands of distinct captions and in-batch false negatives are rare. A held-out
zero-shot set (one object per image, class = colour x shape) comes with class names and prompt
templates. Everything is a pure function of the :class:`ShapesSpec` (seed included).

The files are read back through the same ``datasets`` streaming path as any user dataset.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from siglip_lightning.data.shapes_render import COLORS, SHAPES, SIZES, SceneObject, render_scene

RELATIONS = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}
PLACES = {
    "in the middle": (0.5, 0.5),
    "in the top left": (0.3, 0.3),
    "in the top right": (0.7, 0.3),
    "in the bottom left": (0.3, 0.7),
    "in the bottom right": (0.7, 0.7),
}
_COUNT_WEIGHTS = {1: [1.0], 2: [0.25, 0.75], 3: [0.2, 0.5, 0.3]}
ZEROSHOT_TEMPLATES = ["a {}", "a small {}", "a large {}", "a {} in the middle", "a large {} in the middle"]
SPLITS = ("train", "validation")


@dataclass
class ShapesSpec:
    """Knobs of the built-in shapes dataset.

    Args:
        num_train: training pairs.
        num_validation: validation pairs.
        zeroshot_per_class: held-out single-object images per colour x shape class.
        image_size: stored image side in pixels (the datamodule resizes to the model's).
        num_colors: how many colours are used (difficulty), at most 10.
        num_shapes: how many shape kinds are used (difficulty), at most 8.
        max_objects: objects per image are drawn uniformly from 1..max_objects (at most 3).
        caption_noise: fraction of training captions that are wrong: half replaced by the caption
            of an unrelated scene, half with one attribute changed (mimics noisy web pairs).
        num_shards: parquet shards of the training split (for node / worker sharding).
        seed: makes the whole dataset reproducible.
        max_aspect: render each image at an aspect ratio (width / height) drawn log-uniformly in
            [1 / max_aspect, max_aspect], with about ``image_size`` squared pixels; shapes are not distorted
            (1: all square, the default). For NaFlex, which sees images at their own aspect ratio.
        regions: also write a ``regions`` column: each object's box (x0, y0, x1, y1 as fractions of
            the image's width and height) with its phrase ("a small red circle"), for LocCa's
            referring expressions and grounded captioning (read with ``data.regions_column``).
    """

    num_train: int = 50_000
    num_validation: int = 2_000
    zeroshot_per_class: int = 20
    image_size: int = 64
    num_colors: int = 8
    num_shapes: int = 6
    max_objects: int = 2
    caption_noise: float = 0.0
    num_shards: int = 8
    seed: int = 0
    max_aspect: float = 1.0
    regions: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.num_colors <= len(COLORS):
            raise ValueError(f"num_colors must be in 1..{len(COLORS)}, got {self.num_colors}")
        if not 1 <= self.num_shapes <= len(SHAPES):
            raise ValueError(f"num_shapes must be in 1..{len(SHAPES)}, got {self.num_shapes}")
        if not 1 <= self.max_objects <= 3:
            raise ValueError(f"max_objects must be in 1..3, got {self.max_objects}")
        if self.max_aspect < 1.0:
            raise ValueError(f"max_aspect must be at least 1 (1 = square images), got {self.max_aspect}")
        if not 0.0 <= self.caption_noise <= 1.0:
            raise ValueError(f"caption_noise must be in [0, 1], got {self.caption_noise}")

    @property
    def colors(self) -> List[str]:
        return list(COLORS)[: self.num_colors]

    @property
    def shapes(self) -> List[str]:
        return SHAPES[: self.num_shapes]

    @property
    def class_names(self) -> List[str]:
        return [f"{c} {s}" for c in self.colors for s in self.shapes]

    def fingerprint(self) -> str:
        fields = dataclasses.asdict(self)
        if fields["max_aspect"] == 1.0:  # square data keeps the folder name it had before the option existed
            del fields["max_aspect"]
        if not fields["regions"]:  # and so does data without the regions column
            del fields["regions"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


def _canvas(spec: ShapesSpec, rng: np.random.Generator) -> Tuple[int, int]:
    """(width, height) of the next image: square, or a random aspect ratio of about image_size squared pixels."""
    if spec.max_aspect == 1.0:  # draws nothing from rng: square data is unchanged by the option
        return spec.image_size, spec.image_size
    aspect = float(np.exp(rng.uniform(-np.log(spec.max_aspect), np.log(spec.max_aspect))))
    return max(8, round(spec.image_size * aspect**0.5)), max(8, round(spec.image_size / aspect**0.5))


def _random_object(spec: ShapesSpec, rng: np.random.Generator, cx: float, cy: float) -> SceneObject:
    return SceneObject(
        color=spec.colors[rng.integers(spec.num_colors)],
        shape=spec.shapes[rng.integers(spec.num_shapes)],
        size=list(SIZES)[rng.integers(len(SIZES))],
        cx=cx,
        cy=cy,
    )


def _phrase(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.color} {obj.shape}"


def _random_scene(spec: ShapesSpec, rng: np.random.Generator) -> Tuple[List[SceneObject], str]:
    """Objects with non-overlapping positions, and the caption that describes them."""
    # Single objects have few distinct captions: draw them less often so that in-batch
    # duplicates (false negatives) stay rare.
    count = 1 + int(rng.choice(spec.max_objects, p=_COUNT_WEIGHTS[spec.max_objects]))
    jitter = lambda: float(rng.uniform(-0.06, 0.06))  # noqa: E731 - tiny helper
    if count == 1:
        where = list(PLACES)[rng.integers(len(PLACES))]
        cx, cy = PLACES[where]
        obj = _random_object(spec, rng, cx + jitter(), cy + jitter())
        return [obj], f"{_phrase(obj)} {where}"
    if count == 2:
        relation = list(RELATIONS)[rng.integers(len(RELATIONS))]
        dx, dy = RELATIONS[relation]
        first = _random_object(spec, rng, 0.5 + 0.25 * dx + jitter(), 0.5 + 0.25 * dy + jitter())
        second = _random_object(spec, rng, 0.5 - 0.25 * dx + jitter(), 0.5 - 0.25 * dy + jitter())
        return [first, second], f"{_phrase(first)} {relation} {_phrase(second)}"
    # three objects in a row, described left to right
    objects = [_random_object(spec, rng, x + jitter(), 0.5 + jitter() * 3) for x in (0.2, 0.5, 0.8)]
    for obj in objects:  # three large shapes do not fit side by side
        obj.size = "small"
    caption = f"{_phrase(objects[0])}, {_phrase(objects[1])} and {_phrase(objects[2])}"
    return objects, caption


def _corrupt(caption: str, spec: ShapesSpec, rng: np.random.Generator) -> str:
    """Make a caption wrong: replace it by an unrelated scene's, or change one attribute word."""
    if rng.random() < 0.5:
        return _random_scene(spec, rng)[1]
    words = caption.split()
    swappable = [i for i, w in enumerate(words) if w in spec.colors or w in spec.shapes]
    i = swappable[rng.integers(len(swappable))]
    pool = spec.colors if words[i] in spec.colors else spec.shapes
    words[i] = [w for w in pool if w != words[i]][rng.integers(len(pool) - 1)] if len(pool) > 1 else words[i]
    return " ".join(words)


def object_box(obj: SceneObject, width: int, height: int) -> List[float]:
    """(x0, y0, x1, y1) of the square around ``obj`` as drawn (radius r of the short side), in [0, 1] of
    the image's width and height; the square shape is drawn 0.85 r wide."""
    r = SIZES[obj.size] * min(width, height) * (0.85 if obj.shape == "square" else 1.0)
    rx, ry = r / width, r / height
    return [max(0.0, obj.cx - rx), max(0.0, obj.cy - ry), min(1.0, obj.cx + rx), min(1.0, obj.cy + ry)]


def make_example(spec: ShapesSpec, split: str, index: int) -> Tuple[bytes, str, List[dict]]:
    """(PNG bytes, caption, regions) of one example; deterministic in (spec, split, index). Regions are
    ``{"box": [x0, y0, x1, y1], "caption": phrase}``, true of the image even when the caption is noisy."""
    split_id = SPLITS.index(split)
    rng = np.random.default_rng([spec.seed, split_id, index])
    objects, caption = _random_scene(spec, rng)
    width, height = _canvas(spec, rng)
    image = render_scene(objects, width, rng, height)
    if split == "train" and rng.random() < spec.caption_noise:
        caption = _corrupt(caption, spec, rng)
    regions = [{"box": object_box(obj, width, height), "caption": _phrase(obj)} for obj in objects]
    return image, caption, regions


def make_pair(spec: ShapesSpec, split: str, index: int) -> Tuple[bytes, str]:
    """The (PNG bytes, caption) of one example; deterministic in (spec, split, index)."""
    return make_example(spec, split, index)[:2]


def make_zeroshot_example(spec: ShapesSpec, index: int) -> Tuple[bytes, int]:
    """One held-out single-object image and its class (colour x shape)."""
    label = index % len(spec.class_names)
    rng = np.random.default_rng([spec.seed, 99, index])
    color, shape = spec.class_names[label].split(" ")
    size = list(SIZES)[rng.integers(len(SIZES))]
    obj = SceneObject(color, shape, size, 0.5 + float(rng.uniform(-0.1, 0.1)), 0.5 + float(rng.uniform(-0.1, 0.1)))
    width, height = _canvas(spec, rng)
    return render_scene([obj], width, rng, height), label


def _write_parquet(rows: dict, features, path: Path) -> None:
    import datasets

    datasets.disable_progress_bars()  # one bar for the whole dataset is enough
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))


def _write_pairs_shard(spec: ShapesSpec, split: str, start: int, stop: int, path: Path) -> None:
    import datasets

    columns = {"image": datasets.Image(), "text": datasets.Value("string"), "id": datasets.Value("int64")}
    if spec.regions:
        columns["regions"] = [{"box": datasets.Sequence(datasets.Value("float32"), length=4),
                               "caption": datasets.Value("string")}]
    features = datasets.Features(columns)
    rows = {name: [] for name in columns}
    for index in range(start, stop):
        image, caption, regions = make_example(spec, split, index)
        rows["image"].append({"bytes": image, "path": None})
        rows["text"].append(caption)
        rows["id"].append(index)
        if spec.regions:
            rows["regions"].append(regions)
    _write_parquet(rows, features, path)


def write_shapes_dataset(spec: ShapesSpec, root: os.PathLike, progress: bool = True) -> Path:
    """Write the dataset under ``root`` (atomically: a half-written folder is never used).

    Layout: ``pairs/{train,validation}-XXXXX-of-YYYYY.parquet`` (columns image, text, id),
    ``zeroshot/test-00000-of-00001.parquet`` (image, label) and ``zeroshot_classes.json``.
    """
    import datasets
    from tqdm.auto import tqdm

    root = Path(root)
    if (root / "spec.json").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    (tmp / "pairs").mkdir()
    (tmp / "zeroshot").mkdir()
    jobs = []
    for split, total, shards in (("train", spec.num_train, spec.num_shards), ("validation", spec.num_validation, 1)):
        bounds = np.linspace(0, total, shards + 1).astype(int)
        for shard in range(shards):
            path = tmp / "pairs" / f"{split}-{shard:05d}-of-{shards:05d}.parquet"
            jobs.append((spec, split, int(bounds[shard]), int(bounds[shard + 1]), path))
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    if spec.num_train + spec.num_validation < 20_000 or workers == 1:
        # Starting worker processes costs more than drawing a small dataset.
        for job in tqdm(jobs, desc="built-in data shards", disable=not progress):
            _write_pairs_shard(*job)
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_write_pairs_shard, *job) for job in jobs]
            for future in tqdm(as_completed(futures), total=len(futures), desc="built-in data shards",
                               disable=not progress):
                future.result()
    zs_features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=spec.class_names)}
    )
    zs_rows = {"image": [], "label": []}
    for index in range(spec.zeroshot_per_class * len(spec.class_names)):
        image, label = make_zeroshot_example(spec, index)
        zs_rows["image"].append({"bytes": image, "path": None})
        zs_rows["label"].append(label)
    _write_parquet(zs_rows, zs_features, tmp / "zeroshot" / "test-00000-of-00001.parquet")
    (tmp / "zeroshot_classes.json").write_text(
        json.dumps({"class_names": spec.class_names, "templates": ZEROSHOT_TEMPLATES}, indent=1)
    )
    (tmp / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=1))
    try:
        tmp.rename(root)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def default_data_root() -> Path:
    """Where generated data and tokenizers live: ``$SIGLIP_LIGHTNING_CACHE`` or ~/.cache."""
    return Path(os.environ.get("SIGLIP_LIGHTNING_CACHE", Path.home() / ".cache" / "siglip-lightning"))


def ensure_shapes_dataset(spec: ShapesSpec, root: Optional[os.PathLike] = None) -> Path:
    """The folder of the built-in dataset for ``spec``, generating it on first use."""
    root = Path(root) if root is not None else default_data_root() / "builtin"
    return write_shapes_dataset(spec, root / f"shapes-{spec.fingerprint()}")
