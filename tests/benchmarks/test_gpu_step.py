"""benchmarks/gpu_step.py --smoke (CPU, tiny towers) prints every column of both tables with finite numbers."""
from __future__ import annotations

import math
import os
import subprocess
import sys

from tests.conftest import REPO

STEP_COLUMNS = ["impl", "batch", "compile", "SDPA", "act. ckpt", "samples/s", "TFLOP/s", "MFU", "peak MiB",
                "GFLOP/sample", "ours / open_clip"]
LOSS_COLUMNS = ["impl", "n", "ms", "peak MiB"]


def _tables(out: str) -> list:
    """Each markdown table of ``out`` as (header cells, rows of cells)."""
    tables, lines = [], out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            header = [c.strip() for c in lines[i - 1].strip("|").split("|")]
            rows = []
            for row in lines[i + 1:]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip("|").split("|")])
            tables.append((header, rows))
    return tables


def _finite(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False


def test_smoke_run_prints_every_column_with_finite_numbers():
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_step.py"), "--smoke"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (step_header, steps), (loss_header, losses) = _tables(done.stdout)
    assert step_header == STEP_COLUMNS and loss_header == LOSS_COLUMNS
    arms = {(r[0], r[2], r[3], r[4]) for r in steps}
    for impl in ("ours", "open_clip"):  # eager, compiled, each CPU attention backend, checkpointing
        assert {(impl, "no", "default", "no"), (impl, "yes", "default", "no"), (impl, "no", "math", "no"),
                (impl, "no", "flash", "no"), (impl, "no", "default", "yes")} <= arms
    for row in steps:
        numbers = row[5:10] + ([row[10]] if row[0] == "ours" else [])
        assert all(_finite(cell) for cell in numbers), row
        assert float(row[5]) > 0 and float(row[6]) > 0 and float(row[9]) > 0
    assert {r[0] for r in losses} == {"ours dense", "ours tiled 128", "open_clip"} and len(losses) == 6
    for row in losses:
        assert all(_finite(cell) for cell in row[1:]), row
