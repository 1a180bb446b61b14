"""Shard names and remote shards: brace patterns, globs, and ``https://`` / ``s3://`` / ``gs://`` reads.

``data.path`` may name shards the way webdataset and open_clip write them,
``.../train-{00000..00099}.tar`` (expanded with ``braceexpand``), several patterns joined by
``::``, and globs. Local files go on to ``datasets`` as before. Remote webdataset ``.tar`` and
``.parquet`` shards are read here through fsspec, one file per shard, rather than by
``datasets``' streaming builders: ``datasets`` 5.2 opens every remote file with ``block_size=0``,
which s3fs rejects (``AioSession.__init__() got an unexpected keyword argument 'block_size'``),
and its own read retries sleep 5 s each without counting them.

Retries: a shard that fails part-way (dropped connection, timeout, 5xx) is opened again and the
examples already delivered are skipped, so the stream is the same as an undisturbed read. Each
retry is logged and counted (``retries``); a shard that fails ``max_retries`` times in a row
without progress stops the run with an error naming it: never a hang (fsspec read timeouts) and
never a silently skipped shard. A missing shard or a refused credential is an error at once.
Credentials follow each store's own conventions (``AWS_*`` variables / ``~/.aws`` for s3fs,
``GOOGLE_APPLICATION_CREDENTIALS`` for gcsfs); ``data.storage_options`` is passed to fsspec.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import re
import tarfile
import time
from typing import Any, Dict, Iterator, List, Optional

from siglip_lightning.errors import UserInputError

log = logging.getLogger(__name__)
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")
_TEXT_EXTS = {"txt", "text", "caption", "captions"}
_INT_EXTS = {"cls", "cls2", "index", "inx", "id"}


def is_remote(path: str) -> bool:
    """A URL other than ``file://``."""
    return bool(_URL.match(path)) and not path.startswith("file://")


def has_pattern(path: str) -> bool:
    return "::" in path or "{" in path or any(c in path for c in "*?[")


def expand_shards(path: str, storage_options: Optional[Dict[str, Any]] = None) -> List[str]:
    """Shard names of ``path``: ``::``-separated parts, each brace-expanded, then globbed; in order."""
    from braceexpand import braceexpand

    out: List[str] = []
    for part in path.split("::"):
        for name in braceexpand(part):
            if not any(c in name for c in "*?["):
                out.append(name)
            elif is_remote(name):
                import fsspec

                fs, _, _ = fsspec.get_fs_token_paths(name, storage_options=storage_options or {})
                protocol = name.split("://", 1)[0]
                found = sorted(fs.glob(name))
                out.extend(f if _URL.match(f) else f"{protocol}://{f}" for f in found)
            else:
                out.extend(sorted(glob.glob(os.path.expanduser(name))))
    if not out:
        raise UserInputError(f"data path not found: {path!r} (no shard matches it)")
    return out


def _value(ext: str, data: bytes) -> Any:
    if ext in _TEXT_EXTS:
        return data.decode("utf-8")
    if ext == "json":
        return json.loads(data)
    if ext in _INT_EXTS:
        return int(data.decode().strip())
    return data


def read_tar(stream: io.IOBase, url: str) -> Iterator[Dict[str, Any]]:
    """Webdataset samples of a tar stream: members sharing a key (path up to the first dot of the
    file name) form one example, one column per extension (``jpg``, ``txt``, ``json``, ...)."""
    sample: Dict[str, Any] = {}
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, name = os.path.split(member.name)
            if "." not in name or name.startswith("."):
                continue
            stem, ext = name.split(".", 1)
            key = os.path.join(folder, stem)
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            if not sample:
                sample = {"__key__": key, "__url__": url}
            sample[ext.lower()] = _value(ext.lower(), tar.extractfile(member).read())
    if sample:
        yield sample


def read_parquet(stream: io.IOBase, url: str) -> Iterator[Dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(stream).iter_batches(batch_size=64):
        yield from batch.to_pylist()


READERS = {".tar": read_tar, ".parquet": read_parquet}


def _default_options(url: str) -> Dict[str, Any]:
    """Read timeouts, so that a server that stops answering is an error (and a retry), not a hang."""
    protocol = url.split("://", 1)[0]
    if protocol in ("http", "https"):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)}}
    if protocol in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": 30, "read_timeout": 60}}
    return {}


class RemoteShards:
    """Remote shards of one format as a stream: ``num_shards``, ``iter_shard(i)``, iteration.

    Args:
        urls: the shards, in order.
        max_retries: failed attempts in a row (without a new example) before a shard stops the run.
        backoff: seconds before the first retry, doubled at each further one (at most 30).
        storage_options: fsspec options (endpoint, credentials, ...) merged over the timeouts.
    """

    features = None

    def __init__(self, urls: List[str], max_retries: int = 5, backoff: float = 1.0,
                 storage_options: Optional[Dict[str, Any]] = None) -> None:
        suffixes = {os.path.splitext(u.split("?", 1)[0])[1] for u in urls}
        if len(suffixes) != 1 or next(iter(suffixes)) not in READERS:
            raise UserInputError(f"remote shards must all be one of {sorted(READERS)}, got {sorted(suffixes)}; "
                                 "other remote formats: download them, or use a Hub dataset name")
        self.urls, self.reader = list(urls), READERS[suffixes.pop()]
        self.max_retries, self.backoff = max_retries, backoff
        self.storage_options = storage_options or {}
        self.retries = 0  # in this process, since it started

    @property
    def num_shards(self) -> int:
        return len(self.urls)

    def select_columns(self, columns: List[str]) -> "RemoteShards":
        return self  # examples are dicts: extra columns are harmless

    def _open(self, url: str):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url, **{**_default_options(url), **self.storage_options})
        if type(fs).__name__ == "S3FileSystem":
            # s3fs would retry a failed range read itself, silently (a class attribute, not an option);
            # here each retry is counted and logged
            fs.retries = 1
        if url.startswith(("http://", "https://")) and self.reader is read_tar:
            return fs.open(path, "rb", block_size=0)  # one streamed GET per tar, no range requests
        return fs.open(path, "rb")

    def iter_shard(self, index: int) -> Iterator[Dict[str, Any]]:
        url, delivered, failures = self.urls[index], 0, 0
        while True:
            seen = 0
            try:
                with self._open(url) as stream:
                    for example in self.reader(stream, url):
                        seen += 1
                        if seen > delivered:  # a retry skips what was already handed out
                            delivered, failures = seen, 0
                            yield example
                return
            except (FileNotFoundError, PermissionError, ImportError, TypeError, AttributeError) as err:
                # a missing shard, a refused credential, a missing fsspec backend or a bad option: not transient
                raise UserInputError(f"cannot read data shard {url}: {type(err).__name__}: {err}") from err
            except Exception as err:  # dropped connection, timeout, 5xx, truncated read: try again
                failures += 1
                self.retries += 1
                if failures > self.max_retries:
                    raise UserInputError(
                        f"data shard {url} failed {failures} times in a row ({type(err).__name__}: {err}); "
                        "giving up instead of skipping it (raise data.read_retries or check the store)") from err
                wait = min(self.backoff * 2 ** (failures - 1), 30.0)
                log.warning(f"data: retry {failures}/{self.max_retries} of shard {url} after {delivered} examples, "
                            f"in {wait:.1f}s: {type(err).__name__}: {err}")
                time.sleep(wait)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for index in range(self.num_shards):
            yield from self.iter_shard(index)
