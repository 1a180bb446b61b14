"""Elastic exact resume: a run stopped mid-epoch and resumed on another number of ranks and/or
DataLoader workers reads every example of the epoch exactly once across the interruption."""
from __future__ import annotations

import itertools
from collections import Counter

import pytest

from siglip_lightning.data.loader import StreamLoader
from siglip_lightning.data.mixture import MixedStream
from siglip_lightning.data.resume import StreamProgress
from siglip_lightning.data.stream import collate_pairs
from tests.helpers.data_factory import pairs, write_parquet
from tests.data.test_stream import stream_of


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    return write_parquet(tmp_path_factory.mktemp("elastic"), pairs(48), [11, 3, 9, 14, 4, 7])


@pytest.fixture(scope="module")
def second(tmp_path_factory):
    return write_parquet(tmp_path_factory.mktemp("elastic2"), pairs(30, start=100), [10, 10, 10])


def run_layout(make_stream, world, workers, batches, state=None, batch_size=3):
    """Every rank of a (world, workers) layout reads ``batches`` batches (None: to the end), as the
    datamodule does: positions recorded per batch, state gathered from all ranks."""
    ids, progresses = [], []
    for rank in range(world):
        stream, progress = make_stream(rank, world), StreamProgress()
        if state is not None:
            progress.load_state_dict(state)
        loader = StreamLoader(stream, batch_size=batch_size, num_workers=workers, collate_fn=collate_pairs,
                              drop_last=False, epoch_fn=lambda: 1,
                              start_fn=lambda epoch, s=stream, p=progress, r=rank: p.start_epoch(epoch, s, r, world,
                                                                                                max(1, workers)))
        for batch in itertools.islice(loader, batches):
            progress.record(*batch["_stream"])
            ids.extend(batch["id"].tolist())
        progresses.append(progress)
    ranks = [{"positions": dict(p.current["positions"]), "last_worker": p.current["last_worker"]} for p in progresses]
    return ids, progresses[0].state_dict(False, lambda mine: ranks)


LAYOUTS = [((2, 1), (1, 2)), ((1, 2), (2, 1)), ((1, 0), (3, 2)), ((2, 2), (1, 0))]


@pytest.mark.parametrize("before,after", LAYOUTS, ids=lambda l: f"{l[0]}x{l[1]}")
def test_resume_on_another_layout_reads_every_example_once(uneven, before, after):
    make = lambda rank, world: stream_of(uneven, rank, world, shuffle_buffer=5, seed=3)  # noqa: E731
    first, state = run_layout(make, *before, batches=3)
    second_part, state2 = run_layout(make, *after, batches=2, state=state)  # interrupted again...
    rest, _ = run_layout(make, *after, batches=None, state=state2)  # ...and resumed on the same layout
    seen = Counter(first + second_part + rest)
    assert len(first) > 0 and len(second_part) > 0
    assert sorted(seen) == list(range(48)) and set(seen.values()) == {1}, seen


def test_two_elastic_resumes_in_one_epoch(uneven):
    make = lambda rank, world: stream_of(uneven, rank, world, shuffle_buffer=5, seed=3)  # noqa: E731
    a, state = run_layout(make, 2, 1, batches=2)
    b, state = run_layout(make, 1, 2, batches=3, state=state)
    c, _ = run_layout(make, 3, 0, batches=None, state=state)
    seen = Counter(a + b + c)
    assert sorted(seen) == list(range(48)) and set(seen.values()) == {1}


def test_elastic_resume_of_a_mixture(uneven, second):
    def make(rank, world):
        parts = [stream_of(path, rank, world, shuffle_buffer=4, seed=3) for path in (uneven, second)]
        return MixedStream(parts, [0.6, 0.4], seed=3, rank=rank, world_size=world)

    full, _ = run_layout(make, 1, 0, batches=None)
    first, state = run_layout(make, 1, 2, batches=4)
    rest, _ = run_layout(make, 2, 1, batches=None, state=state)
    seen = Counter(first + rest)
    assert set(seen.values()) == {1}
    # the epoch ends when a worker's first source runs out, so the sets differ a little; most are shared
    assert len(set(seen) & set(full)) >= 0.7 * len(full)


def test_same_layout_resume_is_unchanged(uneven):
    make = lambda rank, world: stream_of(uneven, rank, world, shuffle_buffer=5, seed=3)  # noqa: E731
    full, _ = run_layout(make, 2, 2, batches=None)
    first, state = run_layout(make, 2, 2, batches=2)
    rest, _ = run_layout(make, 2, 2, batches=None, state=state)
    per_rank = len(first) // 2
    assert first[:per_rank] + rest[:len(full) // 2 - per_rank] == full[:len(full) // 2]


# --- through the CLI: SIGKILL mid-epoch, resume on another number of processes and workers -----------
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from lightning.pytorch import Callback  # noqa: E402

from tests.conftest import REPO, run_cli, tiny_fit_args  # noqa: E402
from tests.helpers.data_factory import read_ids  # noqa: E402


class Sleep(Callback):
    """Slows each step down so that a test can SIGKILL the run mid-epoch.

    Args:
        seconds: sleep after each training batch.
    """

    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)


def elastic_args(root, path, record, world, workers, *extra):
    strategy = ["--trainer.devices=2", "--trainer.strategy=ddp"] if world == 2 else []
    return tiny_fit_args(root, f"--data.path={path}", "--data.batch_size=4", f"--data.num_workers={workers}",
                         "--data.shuffle_buffer=0", "--trainer.max_steps=-1", "--trainer.max_epochs=1",
                         "--trainer.limit_val_batches=0", "--model.total_steps=20", *strategy,
                         "--trainer.callbacks+=tests.helpers.data_factory.RecordIds", f"--trainer.callbacks.path={record}",
                         *extra)


def sigkill_after(args, record, step: int, timeout: float = 300) -> None:
    """Start the CLI and SIGKILL its whole process group once a batch after ``step`` steps began."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "siglip_lightning", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if record.exists() and any(s >= step for s, _, _, _ in read_ids(record)):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.1)
    err = proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "still running"
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"the run ended or hung before step {step}: {err}")


@pytest.mark.slow
@pytest.mark.parametrize("before,after", [((2, 1), (1, 2)), ((1, 2), (2, 2))], ids=["2x1-to-1x2", "1x2-to-2x2"])
def test_sigkill_and_resume_on_another_world_size_and_num_workers(tmp_path, before, after):
    path = write_parquet(tmp_path / "data", pairs(48), [12, 12, 12, 12])
    killed, resumed = tmp_path / "killed.jsonl", tmp_path / "resumed.jsonl"
    ckpt = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}", "--trainer.callbacks.every_n_train_steps=2",
            "--trainer.callbacks.save_top_k=-1", "--trainer.callbacks+=tests.data.test_elastic.Sleep"]
    sigkill_after(elastic_args(tmp_path / "run", path, killed, *before, *ckpt), killed, step=3)
    checkpoint = next((tmp_path / "ckpt").glob("*step=2.ckpt"))
    result = run_cli(elastic_args(tmp_path / "run", path, resumed, *after, f"--ckpt_path={checkpoint}"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "elastic resume" in result.stderr
    before_ids = [i for step, _, ids, _ in read_ids(killed) if step < 2 for i in ids]
    after_ids = [i for _, _, ids, _ in read_ids(resumed) for i in ids]
    seen = Counter(before_ids + after_ids)
    assert len(before_ids) == 2 * 4 * before[0]  # two steps of every rank were checkpointed
    assert sorted(seen) == list(range(48)) and set(seen.values()) == {1}, seen


def test_changed_data_is_refused_and_old_checkpoints_load(uneven, tmp_path):
    from siglip_lightning.errors import UserInputError

    make = lambda rank, world: stream_of(uneven, rank, world, shuffle_buffer=5, seed=3)  # noqa: E731
    _, state = run_layout(make, 1, 0, batches=2)
    assert state["shards"] == [6]
    other = write_parquet(tmp_path / "other", pairs(48), [24, 24])
    with pytest.raises(UserInputError, match="shards per source"):
        run_layout(lambda rank, world: stream_of(other, rank, world), 1, 0, batches=1, state=state)
    # the format before generations: one layout, every rank's epoch and positions
    old = {"stream": [{"epoch": 1, "positions": {"0": 6}, "last_worker": 0}], "world_size": 1, "num_workers": 1}
    first, _ = run_layout(make, 1, 0, batches=2)
    rest, _ = run_layout(make, 1, 0, batches=None, state=old)
    full, _ = run_layout(make, 1, 0, batches=None)
    assert first + rest == full
