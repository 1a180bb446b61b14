"""ModelCheckpoint for runs that get killed: atomic files in a folder that a restart finds again."""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Literal, Optional, Union

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from siglip_lightning.checkpointing.atomic import install_atomic_io, remove_partials


class ResumableCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` made safe for preemption.

    Differences from the parent: files are written atomically (a kill during a save leaves the
    previous checkpoint usable), ``last.ckpt`` is written by default, and with no ``dirpath`` the
    files go to ``<trainer.default_root_dir>/checkpoints`` rather than into the logger's new
    ``version_N`` folder, so that re-running the same command with ``--ckpt_path last`` finds them.
    Temporary files of a save that was killed are deleted at the next start. ``enable_version_counter``
    defaults to ``False``: the folder holds one ``last.ckpt`` that every save (of this callback, of a
    second one writing there, of the same command run again) replaces, instead of ``last-v1.ckpt``
    beside it, which ``--ckpt_path last`` would not pick.

    Args:
        dirpath: folder of the checkpoints; default ``<trainer.default_root_dir>/checkpoints``.
        save_last: also write ``last.ckpt`` at every save (what ``--ckpt_path last`` resumes from).
        save_top_k: how many other checkpoints to keep (0: only ``last.ckpt``; -1: all).
        every_n_train_steps: save every N optimizer steps.
        train_time_interval: save when this much training time has passed since the last save,
            e.g. ``"0:15:00"`` (cannot be combined with ``every_n_train_steps``: use two callbacks).
        enable_version_counter: write ``last-v1.ckpt`` ... beside an existing ``last.ckpt`` (off: replace it).
        **kwargs: any other ``ModelCheckpoint`` argument (``filename``, ``monitor``, ...).
    """

    def __init__(
        self,
        dirpath: Optional[str] = None,
        save_last: Optional[Union[bool, Literal["link"]]] = True,
        save_top_k: int = 1,
        every_n_train_steps: Optional[int] = None,
        train_time_interval: Optional[timedelta] = None,
        enable_version_counter: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(dirpath=dirpath, save_last=save_last, save_top_k=save_top_k,
                         every_n_train_steps=every_n_train_steps, train_time_interval=train_time_interval,
                         enable_version_counter=enable_version_counter, **kwargs)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        if not install_atomic_io(trainer):
            rank_zero_info(f"ResumableCheckpoint: {type(trainer.strategy.checkpoint_io).__name__} writes the "
                           "checkpoints (not replaced by the atomic writer)")
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and os.path.isdir(str(self.dirpath)):
            for path in remove_partials(str(self.dirpath)):
                rank_zero_info(f"removed the temporary file of an interrupted save: {path}")
