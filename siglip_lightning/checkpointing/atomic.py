"""Checkpoint files written atomically: a kill during a save leaves the previous file intact.

The bytes go to a hidden temporary file in the same folder, are flushed to disk (fsync), and the
file is then renamed over the target with ``os.replace`` (atomic on POSIX and Windows). A reader
therefore sees either the old complete checkpoint or the new complete one, never half a file.
The temporary name starts with "." and ends with ``.partial`` so that Lightning's
``ckpt_path="last"`` lookup (files named ``last*.ckpt``) never picks it up.
"""
from __future__ import annotations

import glob
import os
import tempfile
from typing import Any, Dict, Optional

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from siglip_lightning.atomic_files import PARTIAL_SUFFIX



def _dump(obj: Any, fileobj) -> None:
    """Serialise ``obj`` into an open binary file (a seam the fault drills replace)."""
    torch.save(obj, fileobj)


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable; not every platform lets a folder be opened for this."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` that never leaves a truncated ``path`` behind."""
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fileobj:
            _dump(obj, fileobj)
            fileobj.flush()
            os.fsync(fileobj.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def remove_partials(directory: str) -> list:
    """Delete temporary files left by saves that were killed; returns the removed paths."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(os.fspath(directory)), f".*{PARTIAL_SUFFIX}")):
        try:
            os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic writes to local disk.

    Remote filesystems (``s3://``, ``gs://``, ...) are written by Lightning's own writer: an object
    store publishes an object only once its upload completes, which is already atomic.
    """

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)


def install_atomic_io(trainer) -> bool:
    """Give ``trainer``'s strategy atomic writes if it uses the plain torch writer.

    Strategies with their own writer (XLA, DeepSpeed, sharded FSDP, a user's plugin) are left
    alone. Returns whether the writer was replaced (or was already atomic).
    """
    strategy = trainer.strategy
    current = getattr(strategy, "checkpoint_io", None)
    if isinstance(current, AtomicCheckpointIO):
        return True
    if type(current) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True
