"""2-process DDP on CPU (gloo): a rank that dies or hangs ends the run with an error, within the timeout;
non-finite steps are skipped on every rank together."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli, tiny_fit_args

pytestmark = pytest.mark.slow

DRILLS = "tests.helpers.drills"
# The timeout also bounds the start-up rendezvous: on a loaded 2-core machine a rank can take ~40 s to
# import everything, so it cannot be much shorter here.
TIMEOUT_S = 90


def _ddp_args(root: Path, *extra: str):
    return tiny_fit_args(
        root,
        f"--config={REPO / 'configs' / 'fragments' / 'ddp_timeout.yaml'}",
        f"--trainer.strategy.init_args.timeout=0:00:{TIMEOUT_S}",
        "--trainer.devices=2",
        "--trainer.max_steps=4",
        "--trainer.limit_val_batches=0",
        "--trainer.logger=false",
        *extra,
    )


def _timed(args):
    start = time.monotonic()
    proc = run_cli(args, timeout=900)
    return proc, time.monotonic() - start


def test_reference_ddp_run_finishes(tmp_path):
    """The same 2-process run without a drill completes: the failures below come from the drills."""
    proc, _ = _timed(_ddp_args(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("mode", ["exit", "hang"])
def test_a_rank_that_dies_or_hangs_ends_the_run_with_an_error(tmp_path, mode):
    # rank 1 stops taking part at step 2 (dies with status 1, or sleeps forever)
    proc, elapsed = _timed(_ddp_args(tmp_path, f"--trainer.callbacks+={DRILLS}.KillAtStep", "--trainer.callbacks.step=2",
                                     f"--trainer.callbacks.mode={mode}", "--trainer.callbacks.rank=1"))
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "Trainer.fit` stopped" not in proc.stderr
    if mode == "hang":
        # rank 0 waits in the gradient all-reduce until the process-group timeout, then fails
        assert "siglip-lightning: error: distributed training failed" in proc.stderr, proc.stderr[-3000:]
        assert "Timed out" in proc.stderr or "timeout" in proc.stderr.lower()
    assert "siglip-lightning: error" in proc.stderr or "terminated with code" in proc.stderr, proc.stderr[-3000:]
    drill = re.search(r"KillAtStep: rank 1 does \w+ at step 2, t=([\d.]+)", proc.stderr)
    assert drill, proc.stderr[-3000:]
    after = time.time() - float(drill.group(1))
    # gone in seconds when the rank exits; within the process-group timeout (+ teardown) when it hangs
    assert after < (60 if mode == "exit" else TIMEOUT_S + 60), after
    print(f"{mode}: ended with status {proc.returncode}, {after:.0f} s after rank 1 stopped ({elapsed:.0f} s in all)")


def test_nonfinite_on_one_rank_is_skipped_on_all_ranks(tmp_path):
    steps = tmp_path / "steps.jsonl"
    # Only rank 1's loss is NaN at step 1, and gradients are not checked: rank 0 sees a finite loss
    # and finite local gradients, so only the all-reduced flag can make it skip too.
    proc, _ = _timed(_ddp_args(
        tmp_path, "--nonfinite.check_gradients=false",
        f"--trainer.callbacks+={DRILLS}.InjectNonFinite", "--trainer.callbacks.steps=[1]", "--trainer.callbacks.rank=1",
        f"--trainer.callbacks+={DRILLS}.StepRecorder", f"--trainer.callbacks.path={steps}",
        "--trainer.callbacks+=siglip_lightning.checkpointing.ResumableCheckpoint", "--trainer.callbacks.every_n_train_steps=4"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in (steps, Path(f"{steps}.rank1")):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["skipped_nonfinite"] for r in records] == [0, 1, 1, 1], path
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())
