"""StallWatchdog fires when progress stops, and not while batches keep finishing."""
from __future__ import annotations

import time

import pytest

from tests.conftest import run_cli, tiny_fit_args
from siglip_lightning.checkpointing.watchdog import StallWatchdog


def _watchdog(timeout):
    calls = []
    dog = StallWatchdog(timeout=timeout, exit_code=7)
    dog._abort = lambda message, code: calls.append((message, code))
    return dog, calls


def test_fires_after_timeout_without_progress():
    dog, calls = _watchdog(0.4)
    dog.kick("training step 12")
    dog.start()
    time.sleep(1.5)
    dog.stop()
    assert len(calls) == 1
    message, code = calls[0]
    assert code == 7 and "no progress" in message and "training step 12" in message


def test_quiet_while_kicked_and_after_stop():
    dog, calls = _watchdog(0.6)
    dog.start()
    for step in range(8):
        time.sleep(0.2)
        dog.kick(f"training step {step}")
    dog.stop()
    time.sleep(1.0)
    assert calls == []


@pytest.mark.slow
def test_hung_cli_run_is_ended_by_the_watchdog(tmp_path):
    start = time.monotonic()
    proc = run_cli(tiny_fit_args(
        tmp_path, "--trainer.max_steps=4", "--trainer.limit_val_batches=0", "--trainer.logger=false",
        "--trainer.callbacks+=siglip_lightning.checkpointing.watchdog.StallWatchdog", "--trainer.callbacks.timeout=15",
        "--trainer.callbacks+=tests.helpers.drills.KillAtStep", "--trainer.callbacks.step=2",
        "--trainer.callbacks.mode=hang"))
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "made no progress for" in proc.stderr and "after training step 2" in proc.stderr
    assert "KillAtStep.on_train_batch_start" in proc.stderr or "in on_train_batch_start" in proc.stderr  # the stack
    assert time.monotonic() - start < 600
