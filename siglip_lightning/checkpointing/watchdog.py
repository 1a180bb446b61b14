"""End a run that has stopped making progress, with a message and every thread's stack."""
from __future__ import annotations

import faulthandler
import sys
import threading
import time
from typing import Callable, Optional

from lightning.pytorch.callbacks import Callback

from siglip_lightning import _compat


def _abort(message: str, exit_code: int) -> None:
    print(f"siglip-lightning: error: {message}", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    _compat.hard_exit(exit_code)


class StallWatchdog(Callback):
    """Ends the process when no training or validation batch has finished for ``timeout`` seconds.

    The process-group timeout only fires inside a collective, and only under DDP. This catches
    the other hangs (a stuck file system or data loader worker, a deadlock, all ranks waiting on
    the same thing), prints which rank and step stalled and the stack of every thread, and exits
    with ``exit_code``; under DDP, Lightning's launcher then ends the other ranks. Restart with
    ``--ckpt_path last``. Choose ``timeout`` above the slowest step and checkpoint save.

    Args:
        timeout: seconds without a finished batch before the process is ended.
        exit_code: the exit status of a stalled process.
    """

    def __init__(self, timeout: float = 1800.0, exit_code: int = 4) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = float(timeout)
        self.exit_code = exit_code
        self._abort: Callable[[str, int], None] = _abort  # tests replace it
        self._last = time.monotonic()
        self._where = "start of training"
        self._rank = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- the clock -------------------------------------------------------------------------------
    def kick(self, where: str) -> None:
        self._last, self._where = time.monotonic(), where

    def start(self) -> None:
        if self._thread is not None:
            return
        self.kick(self._where)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread = None

    def _watch(self) -> None:
        stop = self._stop
        while not stop.wait(min(self.timeout / 4, 30.0)):
            idle = time.monotonic() - self._last
            if idle > self.timeout:
                self._abort(f"rank {self._rank} made no progress for {idle:.0f} s (StallWatchdog timeout "
                            f"{self.timeout:.0f} s) after {self._where}; stacks of all threads follow", self.exit_code)
                return

    # --- hooks -----------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._rank = trainer.global_rank
        self.kick("the start of training")
        self.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.kick(f"training step {trainer.global_step}")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.kick(f"validation batch {batch_idx} at step {trainer.global_step}")

    def on_train_end(self, trainer, pl_module) -> None:
        self.stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.stop()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.stop()
