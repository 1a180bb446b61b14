"""Read a retrieval set (images with one or more captions, maybe in several languages) into one shape.

Understood layouts:

* Karpathy split json (``dataset_coco.json`` / ``dataset_flickr30k.json``): ``{"images": [{"filepath",
  "filename", "split", "sentences": [{"raw"}]}]}``; only the images of ``split`` (default ``test``).
* COCO captions json (``captions_val2014.json``): ``{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}``.
* A json list ``[{"image": path, "caption": str | [str]}]`` (LAVIS' ``coco_karpathy_test.json``).
* Any dataset ``datasets`` reads (parquet, imagefolder + metadata, webdataset, Hub name, ...): the
  caption column (or a dotted path into a json column: ``json.captions``) holds a string, a list of
  strings, or a dict language -> string/list (XM3600 style); rows that
  share ``image_id_column`` are one image; ``language_column`` names each row's language.

Image paths in json files are relative to ``image_root`` (default: the json file's folder).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Hashable, Iterator, List, Optional, Sequence, Tuple

import datasets

from siglip_lightning.data.captions import lookup
from siglip_lightning.data.sources import IMAGE_COLUMNS, TEXT_COLUMNS, pick_column
from siglip_lightning.errors import UserInputError
from siglip_lightning.eval.loading import open_eval_split

Caption = Tuple[str, Optional[str]]  # (text, language or None)


@dataclass
class CaptionSet:
    """Captions in a fixed order, the image each belongs to, and a re-iterable source of the images."""

    captions: List[str]
    caption_image: List[int]
    caption_language: List[Optional[str]]
    num_images: int
    images: Any  # re-iterable (position, raw image, -1)

    @property
    def languages(self) -> List[str]:
        return sorted({lang for lang in self.caption_language if lang is not None})


def expand_captions(value: Any, language: Optional[str] = None) -> List[Caption]:
    """All (text, language) pairs in a caption cell: str, list of str/dicts, or dict language -> str/list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [(value, language)] if value.strip() else []
    if isinstance(value, dict):
        for key in ("raw", "caption", "text"):  # one caption record, e.g. Karpathy's sentences
            if isinstance(value.get(key), str):
                return expand_captions(value[key], value.get("language", language))
        for key in ("captions", "sentences"):  # a json sidecar holding the image's caption list
            if isinstance(value.get(key), (list, tuple)):
                return expand_captions(value[key], language)
        return [c for lang, texts in value.items() for c in expand_captions(texts, str(lang))]
    if isinstance(value, (list, tuple)):
        return [c for item in value for c in expand_captions(item, language)]
    raise UserInputError(f"cannot read captions from a value of type {type(value).__name__}: {value!r:.80}")


class _Collector:
    """Assigns image positions in order of first appearance and keeps each image's captions."""

    def __init__(self, max_images: Optional[int], languages: Optional[Sequence[str]]) -> None:
        self.max_images, self.languages = max_images, set(languages) if languages else None
        self.by_key: Dict[Hashable, List[Caption]] = {}

    def add(self, key: Hashable, captions: List[Caption]) -> None:
        if key not in self.by_key:
            if self.max_images is not None and len(self.by_key) >= self.max_images:
                return
            self.by_key[key] = []
        if self.languages is not None:
            captions = [c for c in captions if c[1] in self.languages]
        self.by_key[key].extend(captions)

    def finish(self, where: str) -> Tuple[Dict[Hashable, int], List[str], List[int], List[Optional[str]]]:
        # Images left without a caption (e.g. by the language filter) can never be retrieved: drop them.
        keys = [key for key, caps in self.by_key.items() if caps]
        if not keys:
            raise UserInputError(f"{where}: no image with a caption found")
        position = {key: i for i, key in enumerate(keys)}
        captions, caption_image, caption_language = [], [], []
        for key in keys:
            for text, lang in self.by_key[key]:
                captions.append(text)
                caption_image.append(position[key])
                caption_language.append(lang)
        return position, captions, caption_image, caption_language


class _ListedImages:
    """(position, path, -1) for image files listed in a json."""

    def __init__(self, paths: List[str]) -> None:
        self.paths = paths

    def __iter__(self) -> Iterator[Tuple[int, str, int]]:
        for position, path in enumerate(self.paths):
            yield position, path, -1


class _StreamImages:
    """(position, raw image, -1) for the first row of each kept image of a streaming dataset."""

    def __init__(self, stream, image_column: str, id_column: Optional[str], position: Dict[Hashable, int],
                 image_root: Optional[str]) -> None:
        self.stream, self.image_column, self.id_column = stream, image_column, id_column
        self.position, self.image_root = position, image_root

    def __iter__(self) -> Iterator[Tuple[int, Any, int]]:
        done = set()
        for row, example in enumerate(self.stream):
            key = example[self.id_column] if self.id_column else row
            where = self.position.get(key)
            if where is None or where in done:
                continue
            done.add(where)
            raw = example[self.image_column]
            if isinstance(raw, str) and self.image_root:
                raw = os.path.join(self.image_root, raw)
            yield where, raw, -1
            if len(done) == len(self.position):
                return


def _read_json(path: Path, split: Optional[str], image_root: Optional[str], max_images: Optional[int],
               languages: Optional[Sequence[str]], where: str) -> CaptionSet:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserInputError(f"{where}: {path} is not valid json: {err}") from err
    root = Path(image_root).expanduser() if image_root else path.parent
    collector = _Collector(max_images, languages)
    files: Dict[Hashable, str] = {}
    if isinstance(data, dict) and data.get("images") and "sentences" in data["images"][0]:  # Karpathy
        wanted = split or "test"
        for index, image in enumerate(data["images"]):
            if image.get("split", wanted) != wanted:
                continue
            files[index] = str(root / image.get("filepath", "") / image["filename"])
            collector.add(index, expand_captions(image["sentences"]))
    elif isinstance(data, dict) and "annotations" in data and "images" in data:  # COCO captions
        by_image: Dict[Hashable, List[Caption]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).extend(expand_captions(ann.get("caption")))
        for image in data["images"]:
            files[image["id"]] = str(root / image["file_name"])
            collector.add(image["id"], by_image.get(image["id"], []))
    elif isinstance(data, list) and data and isinstance(data[0], dict) and "image" in data[0]:  # LAVIS
        for index, item in enumerate(data):
            key = item.get("image_id", item["image"])
            files.setdefault(key, str(root / item["image"]))
            collector.add(key, expand_captions(item.get("caption", item.get("captions"))))
    else:
        raise UserInputError(f"{where}: {path} is not a Karpathy split, COCO captions or [{{image, caption}}] json")
    position, captions, caption_image, caption_language = collector.finish(where)
    paths = [files[key] for key in position]  # position order == insertion order
    return CaptionSet(captions, caption_image, caption_language, len(position), _ListedImages(paths))


def _read_stream(stream: datasets.IterableDataset, image_column: Optional[str], caption_column: Optional[str],
                 id_column: Optional[str], language_column: Optional[str], image_root: Optional[str],
                 max_images: Optional[int], languages: Optional[Sequence[str]], where: str) -> CaptionSet:
    features = stream.features
    columns = list(features) if features is not None else list(next(iter(stream)).keys())
    image_column = pick_column(columns, image_column, IMAGE_COLUMNS, "image", f"{where} image_column")
    caption_field = caption_column  # may be a dotted path into a json column (webdataset: json.captions)
    if caption_column is not None and caption_column not in columns and "." in caption_column:
        caption_column = caption_column.split(".", 1)[0]
    caption_column = pick_column(columns, caption_column, TEXT_COLUMNS, "caption", f"{where} caption_column")
    caption_field = caption_field if caption_field is not None else caption_column
    for column, key in ((id_column, "image_id_column"), (language_column, "language_column")):
        if column is not None and column not in columns:
            raise UserInputError(f"{where}: {key} {column!r} not found; the data has columns {columns}")
    if features is not None and isinstance(features.get(image_column), datasets.Image):
        stream = stream.cast_column(image_column, datasets.Image(decode=False))
    text_only = [c for c in (caption_column, id_column, language_column) if c]
    collector = _Collector(max_images, languages)
    # The caption pass reads no image bytes when the format allows it (parquet does).
    caption_stream = stream.select_columns(text_only) if features is not None else stream
    for row, example in enumerate(caption_stream):
        key = example[id_column] if id_column else row
        language = str(example[language_column]) if language_column else None
        collector.add(key, expand_captions(lookup(example, caption_field), language))
    position, captions, caption_image, caption_language = collector.finish(where)
    images = _StreamImages(stream, image_column, id_column, position, image_root)
    return CaptionSet(captions, caption_image, caption_language, len(position), images)


def read_caption_set(path: str, split: Optional[str] = None, image_root: Optional[str] = None,
                     image_column: Optional[str] = None, caption_column: Optional[str] = None,
                     image_id_column: Optional[str] = None, language_column: Optional[str] = None,
                     max_images: Optional[int] = None, languages: Optional[Sequence[str]] = None,
                     where: str = "retrieval") -> CaptionSet:
    """Open ``path`` (a json file of a known layout, or any dataset source) as a :class:`CaptionSet`."""
    file = Path(path).expanduser()
    if file.is_file() and file.suffix == ".json":
        return _read_json(file, split, image_root, max_images, languages, where)
    stream = open_eval_split(path, split, where)
    return _read_stream(stream, image_column, caption_column, image_id_column, language_column, image_root,
                        max_images, languages, where)

