"""Kill a CPU fit with SIGKILL, resume it with ``--ckpt_path last``, compare with an uninterrupted run."""
from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import List

import lightning as L
import pytest
import torch

from tests.conftest import run_cli, tiny_fit_args
from tests.helpers.fault_helpers import read_steps
from siglip_lightning.data.datamodule import ImageTextDataModule

pytestmark = pytest.mark.slow

CKPT = "siglip_lightning.checkpointing.ResumableCheckpoint"
DRILLS = "tests.helpers.drills"


def _args(root: Path, max_steps: int, every: int, *extra: str) -> List[str]:
    return tiny_fit_args(
        root,
        "--seed_everything=0",
        f"--trainer.max_steps={max_steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.logger=false",
        "--data.shuffle_buffer=0",
        "--data.num_workers=0",
        f"--trainer.callbacks+={CKPT}",
        f"--trainer.callbacks.every_n_train_steps={every}",
        f"--trainer.callbacks+={DRILLS}.StepRecorder",
        f"--trainer.callbacks.path={root}/steps.jsonl",
        "--trainer.callbacks.draw_rng=true",
        *extra,
    )


def _weights(root: Path) -> dict:
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)


def _run_killed_then_resumed(root: Path, max_steps: int, every: int, kill_step: int, extra=()):
    killed = run_cli(_args(root, max_steps, every, *extra, f"--trainer.callbacks+={DRILLS}.KillAtStep",
                           f"--trainer.callbacks.step={kill_step}"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    saved = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == (kill_step // every) * every
    resumed = run_cli(_args(root, max_steps, every, *extra, "--ckpt_path=last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return saved["global_step"]


def _assert_same_training_state(steps_a, steps_b, ckpt_a, ckpt_b) -> None:
    """What this project's fault tolerance restores itself: counters, schedule, RNG, t', b, optimizer."""
    assert [s["step"] for s in steps_a] == [s["step"] for s in steps_b]
    for a, b in zip(steps_a, steps_b):
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12), a["step"]
        assert a["rng"] == b["rng"], f"random streams differ after the resume at step {a['step']}"
    assert ckpt_a["global_step"] == ckpt_b["global_step"]
    assert ckpt_a["lr_schedulers"][0]["last_epoch"] == ckpt_b["lr_schedulers"][0]["last_epoch"]
    steps = lambda c: {int(s["step"]) for s in c["optimizer_states"][0]["state"].values()}  # noqa: E731
    assert steps(ckpt_a) == steps(ckpt_b)


def _assert_same_numbers(steps_a, steps_b, ckpt_a, ckpt_b) -> None:
    for a, b in zip(steps_a, steps_b):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), a["step"]
    for name, value in ckpt_a["state_dict"].items():
        torch.testing.assert_close(ckpt_b["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    for name in ("logit_scale", "logit_bias"):  # t' and b
        assert ckpt_b["state_dict"][name].item() == pytest.approx(ckpt_a["state_dict"][name].item(), rel=1e-6)
    for sa, sb in zip(ckpt_a["optimizer_states"][0]["state"].values(), ckpt_b["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(sb["exp_avg"], sa["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(sb["exp_avg_sq"], sa["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def test_resume_restores_model_optimizer_schedule_rng_and_counters(tmp_path):
    """One batch per epoch, so the data position cannot matter: everything else must resume exactly."""
    one_batch = ("--trainer.limit_train_batches=1",)
    plain, broken = tmp_path / "plain", tmp_path / "broken"
    assert run_cli(_args(plain, 7, 2, *one_batch)).returncode == 0
    resumed_from = _run_killed_then_resumed(broken, 7, 2, 5, one_batch)
    assert resumed_from == 4
    steps_plain, steps_broken = read_steps(plain / "steps.jsonl"), read_steps(broken / "steps.jsonl")
    assert [s["step"] for s in steps_plain] == list(range(1, 8))
    ckpt_plain, ckpt_broken = _weights(plain), _weights(broken)
    _assert_same_training_state(steps_plain, steps_broken, ckpt_plain, ckpt_broken)
    # The checkpoint at step 4 is taken on the last batch Lightning runs in its epoch: the resumed
    # run must start the next epoch afresh, reading what the uninterrupted run read.
    differ = [a["step"] for a, b in zip(steps_plain, steps_broken) if a.get("ids") != b.get("ids")]
    assert not differ, f"after a resume at a limit_train_batches epoch end, steps {differ} read other samples"
    _assert_same_numbers(steps_plain, steps_broken, ckpt_plain, ckpt_broken)


def _datamodule_resumes_position() -> bool:
    return ImageTextDataModule.state_dict is not L.LightningDataModule.state_dict


def test_sigkill_mid_epoch_resume_matches_uninterrupted_run(tmp_path):
    """512 pairs, batch 16: 32 batches per epoch; a checkpoint every 3 steps, SIGKILL at step 5."""
    plain, broken = tmp_path / "plain", tmp_path / "broken"
    assert run_cli(_args(plain, 8, 3)).returncode == 0
    assert _run_killed_then_resumed(broken, 8, 3, 5) == 3
    steps_plain, steps_broken = read_steps(plain / "steps.jsonl"), read_steps(broken / "steps.jsonl")
    ckpt_plain, ckpt_broken = _weights(plain), _weights(broken)
    _assert_same_training_state(steps_plain, steps_broken, ckpt_plain, ckpt_broken)
    # From here on the result depends on the data stream resuming at the right sample.
    try:
        assert all("ids" in s for s in steps_plain), "batches carry no 'id' column"
        ids_plain = [i for s in steps_plain for i in s["ids"]]
        ids_broken = [i for s in steps_broken for i in s["ids"]]
        assert len(set(ids_broken)) == len(ids_broken), "a sample was read twice after the resume"
        assert ids_broken == ids_plain, "the resumed run read other samples than the uninterrupted one"
        _assert_same_numbers(steps_plain, steps_broken, ckpt_plain, ckpt_broken)
    except AssertionError as err:
        if not _datamodule_resumes_position():
            pytest.xfail(f"needs the data stream position in checkpoints (ImageTextDataModule.state_dict, "
                         f"issue 4 / the data helper's branch) and batch['id']: {err}")
        raise


def test_kill_during_checkpoint_write_resumes_from_previous_checkpoint(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    killed = run_cli(_args(tmp_path, 6, 2, f"--trainer.callbacks+={DRILLS}.KillDuringCheckpoint",
                           "--trainer.callbacks.step=4"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    partials = [p.name for p in ckpt_dir.iterdir() if p.name.endswith(".partial")]
    assert len(partials) == 1, sorted(p.name for p in ckpt_dir.iterdir())  # the save that was cut short
    assert not (ckpt_dir / "epoch=0-step=4.ckpt").exists()
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 2  # the previous one, intact

    resumed = run_cli(_args(tmp_path, 6, 2, "--ckpt_path=last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not [p for p in ckpt_dir.iterdir() if p.name.endswith(".partial")]
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 6
    lines = [json.loads(line)["step"] for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert lines == [1, 2, 3, 4, 3, 4, 5, 6]  # steps 3-4 redone from the step-2 checkpoint
