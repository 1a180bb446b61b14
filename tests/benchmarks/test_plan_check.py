"""The planner against real steps on this CPU (benchmarks/plan_check.py): the planned per-device peak within
15% of the measured one and the planned FLOPs equal to the FLOPs counted on the real step."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

BOUND = 0.15


def _check(*cases: str) -> list:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/plan_check.py"), "--json", "--cases", *cases],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["case"] for r in rows] == list(cases)
    return rows


def _assert_planned(row: dict) -> None:
    assert abs(row["peak_ratio"] - 1) <= BOUND, row
    assert row["planned_flops"] == row["measured_flops"], row


def test_a_one_process_step_is_planned():
    (row,) = _check("dense-64")
    _assert_planned(row)
    assert row["ranks"] == 1 and row["loss_memory_from"] == "traced"


@pytest.mark.slow
def test_every_case_is_planned():
    """Dense, tiled and softmax losses, DDP and FSDP2 on 2 gloo processes, gradient caching, activation
    checkpointing, bf16-mixed, and the loss formulas where the loss holds much of the memory (~5 min)."""
    from benchmarks.plan_check import CASES

    rows = _check(*CASES)
    for row in rows:
        _assert_planned(row)
    by_case = {r["case"]: r for r in rows}
    assert by_case["ring-ddp2"]["ranks"] == by_case["fsdp2"]["ranks"] == 2
    assert by_case["loss-heavy ring-ddp2"]["loss_memory_from"] == "formula: sigmoid ring"
