"""Open any image-text source as a streaming Hugging Face dataset, with errors that name the problem.

A source is a Hub dataset name, a local folder (parquet / imagefolder / webdataset / json / csv,
splits inferred from file names by ``datasets``), a file or a glob of files. The built-in data is
just a local parquet folder.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional

import datasets

from siglip_lightning.data.karpathy import is_karpathy, karpathy_splits
from siglip_lightning.data.remote import RemoteShards, expand_shards, has_pattern, is_remote
from siglip_lightning.errors import UserInputError

IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "image_path", "file_name", "filename")
TEXT_COLUMNS = ("text", "caption", "txt", "captions", "sentences", "sentence", "title")
ID_COLUMNS = ("id", "__key__", "key", "uid", "sample_id")
_BUILDER_BY_SUFFIX = {".parquet": "parquet", ".tar": "webdataset", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def caption_strings(values: Iterable) -> Iterator[str]:
    """Every caption of a stream of caption-column values (a string, or a list of them)."""
    for value in values:
        yield from (value if isinstance(value, (list, tuple)) else [value])


def _looks_local(path: str) -> bool:
    """A path or glob rather than a Hub name ("org/name")."""
    return (
        os.path.exists(path)
        or path.startswith((".", "/", "~"))
        or any(ch in path for ch in "*?[")
        or Path(path).suffix in _BUILDER_BY_SUFFIX
    )


def open_splits(path: str, storage_options: Optional[dict] = None, read_retries: int = 5,
                retry_backoff: float = 1.0) -> Dict[str, datasets.IterableDataset]:
    """All splits of ``path`` as streaming datasets, keyed by split name (remote shards: one
    ``train`` split of :class:`~siglip_lightning.data.remote.RemoteShards`)."""
    if is_remote(path):
        return {"train": RemoteShards(expand_shards(path, storage_options), read_retries, retry_backoff,
                                      storage_options)}
    expanded = os.path.expanduser(path)
    if is_karpathy(expanded):
        return karpathy_splits(expanded)
    try:
        if os.path.isdir(expanded):
            loaded = datasets.load_dataset(expanded, streaming=True)
        elif _looks_local(expanded) or has_pattern(expanded):
            files = expand_shards(expanded) if has_pattern(expanded) else sorted(glob.glob(expanded))
            if not files:
                raise UserInputError(f"data path not found: {path!r} (no file or folder matches it)")
            suffixes = {Path(f).suffix for f in files}
            builders = {_BUILDER_BY_SUFFIX.get(s) for s in suffixes}
            if len(builders) != 1 or None in builders:
                raise UserInputError(
                    f"cannot tell the format of {path!r}: file types {sorted(suffixes)}; expected one of "
                    f"{sorted(_BUILDER_BY_SUFFIX)} or a folder"
                )
            loaded = datasets.load_dataset(builders.pop(), data_files={"train": files}, streaming=True)
        else:
            loaded = datasets.load_dataset(path, streaming=True)
    except UserInputError:
        raise
    except FileNotFoundError as err:
        raise UserInputError(f"data path not found: {path!r} ({err})") from err
    except (datasets.exceptions.DatasetNotFoundError, ConnectionError, OSError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE is set, so the Hub is not asked)" if offline else ""
        raise UserInputError(
            f"data path not found: {path!r} is neither a local file/folder nor a reachable Hub dataset{hint}: {err}"
        ) from err
    except ValueError as err:
        raise UserInputError(f"cannot read the dataset at {path!r}: {err}") from err
    if isinstance(loaded, datasets.IterableDataset):
        loaded = {"train": loaded}
    return dict(loaded)


def column_names(stream: datasets.IterableDataset) -> List[str]:
    """Column names, from the features when known, else from the first example."""
    if stream.features is not None:
        return list(stream.features)
    try:
        return list(next(iter(stream)).keys())
    except StopIteration:
        raise UserInputError("the dataset is empty: no example to read") from None


def pick_column(available: Iterable[str], wanted: Optional[str], candidates: Iterable[str], role: str, key: str) -> str:
    """The column to use for ``role`` (image/text): the one named, else the first known default."""
    available = list(available)
    if wanted is not None:
        if wanted not in available:
            raise UserInputError(f"{role} column {wanted!r} not found ({key}); the dataset has columns {available}")
        return wanted
    for name in candidates:
        if name in available:
            return name
    raise UserInputError(
        f"no {role} column found: the dataset has columns {available}; none of the defaults "
        f"{list(candidates)} is there, so set {key}"
    )


def iter_shard(stream: datasets.IterableDataset, index: int, chunk: int = 64) -> Iterator[dict]:
    """The examples of one shard (data file) of ``stream``, in file order.

    ``IterableDataset.iter`` is used rather than ``iter(stream)``: inside a DataLoader worker the
    latter re-splits the shards among workers by itself, and the sharding here is ours.
    """
    if hasattr(stream, "iter_shard"):  # RemoteShards: its own reader, with retries
        yield from stream.iter_shard(index)
        return
    shard = stream.shard(num_shards=stream.num_shards, index=index, contiguous=True)
    for batch in shard.iter(batch_size=chunk):
        keys = list(batch)
        for row in zip(*(batch[k] for k in keys)):
            yield dict(zip(keys, row))


def open_undecoded_splits(path: str, storage_options: Optional[dict] = None, read_retries: int = 5,
                          retry_backoff: float = 1.0) -> Dict[str, datasets.IterableDataset]:
    """:func:`open_splits` with image columns left as bytes: the stream decodes them itself, so that a
    bad file is a counted skip, not a crash."""
    splits = open_splits(path, storage_options, read_retries, retry_backoff)
    for name, stream in list(splits.items()):
        for column, feature in (stream.features or {}).items():
            if isinstance(feature, datasets.Image):
                splits[name] = splits[name].cast_column(column, datasets.Image(decode=False))
    return splits


def image_root(path: str) -> Optional[str]:
    """Where relative image paths of a local jsonl/csv point: the folder of the file(s)."""
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        return local
    parent = os.path.dirname(local)
    return parent if parent and not any(c in parent for c in "*?[") and os.path.isdir(parent) else None
