"""Atomic checkpoint writes: a kill in the middle of a save leaves the previous file usable."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from siglip_lightning.checkpointing.atomic import PARTIAL_SUFFIX, AtomicCheckpointIO, atomic_save, remove_partials

REPO = Path(__file__).resolve().parents[2]

KILL_MID_SAVE = textwrap.dedent("""
    import sys, torch
    from siglip_lightning.checkpointing import atomic
    from tests.helpers.drills import _dump_half_then_die
    path = sys.argv[1]
    atomic.atomic_save({"version": 1, "w": torch.arange(100000.0)}, path)
    atomic._dump = _dump_half_then_die  # the next save dies with SIGKILL after writing half its bytes
    atomic.atomic_save({"version": 2, "w": torch.zeros(100000)}, path)
    print("not reached")
""")


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    proc = subprocess.run([sys.executable, "-c", KILL_MID_SAVE, str(path)], env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "not reached" not in proc.stdout
    partials = [p for p in tmp_path.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]
    assert len(partials) == 1, list(tmp_path.iterdir())
    # the half-written file really is unusable: it is the thing the rename protects us from
    assert 0 < partials[0].stat().st_size < path.stat().st_size
    loaded = torch.load(path, weights_only=True)
    assert loaded["version"] == 1 and torch.equal(loaded["w"], torch.arange(100000.0))
    # Lightning's ckpt_path="last" looks for last*.ckpt: the temporary name must not look like one
    assert not partials[0].name.startswith("last") and partials[0].suffix != ".ckpt"
    assert remove_partials(str(tmp_path)) == [str(partials[0])]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_atomic_save_replaces_and_cleans_up_on_error(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "x.ckpt"
    atomic_save({"a": torch.ones(3)}, str(path))
    AtomicCheckpointIO().save_checkpoint({"a": torch.full((3,), 2.0)}, str(path))
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.full((3,), 2.0))

    from siglip_lightning.checkpointing import atomic

    def broken(obj, fileobj):
        fileobj.write(b"garbage")
        raise OSError("disk full")

    monkeypatch.setattr(atomic, "_dump", broken)
    try:
        atomic_save({"a": torch.zeros(3)}, str(path))
    except OSError:
        pass
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.full((3,), 2.0))
    assert [p.name for p in path.parent.iterdir()] == ["x.ckpt"]  # no temporary file left behind
