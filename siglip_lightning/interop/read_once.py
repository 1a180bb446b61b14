"""Read a pretrained folder's weights once per process, however many readers ask for them.

``--pretrained`` asks a folder for t' and b while the config is parsed, then each tower reads its
half when the model is built (and ``wise-ft`` / ``export`` rebuild those towers from the checkpoint's
record). The towers are built by jsonargparse from ``class_path`` + ``init_args``, so a loaded state
cannot be handed to them through the config: they all ask this cache instead. The key holds every
weight file's resolved path, mtime and size, so a folder rewritten in between is read again. One
entry is kept (a run starts from one folder), and ``forget`` drops it once the model is built, so a
large checkpoint is not held in memory twice for the whole run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Optional, Tuple

_entry: Optional[Tuple[Hashable, Any]] = None


def stamp(files: Iterable[Path]) -> Tuple:
    """(resolved path, mtime in ns, size) of each file: what makes a cached read stale."""
    out = []
    for file in files:
        info = Path(file).stat()
        out.append((str(Path(file).resolve()), info.st_mtime_ns, info.st_size))
    return tuple(out)


def read_once(key: Hashable, load: Callable[[], Any]) -> Any:
    """``load()``, or what it returned last time for the same ``key``."""
    global _entry
    if _entry is None or _entry[0] != key:
        _entry = None  # release the previous folder before loading the next
        _entry = (key, load())
    return _entry[1]


def forget() -> None:
    """Drop the cached weights (the towers hold their own copies once built)."""
    global _entry
    _entry = None
