"""Write-then-rename: the one way the package writes a file that a reader (or a killed run) must see
whole or not at all (tokenizers, caches, data shards; checkpoints add an fsync on top)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path`` (atomic on POSIX
    and Windows), on error it is deleted. The temporary name starts with "." and ends with
    ``.partial``, so globs of the real files never pick it up."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
