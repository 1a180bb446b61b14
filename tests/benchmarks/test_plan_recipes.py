"""benchmarks/plan_recipes.py (docs/SCALING.md's table) plans every committed recipe at full size."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO


@pytest.mark.slow
def test_every_recipe_has_a_row_with_numbers():
    """Full-size recipes (B/16 and the others), about a minute and a half."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/plan_recipes.py")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("|")[1].strip().split()[0]: [c.strip() for c in line.strip("|").split("|")]
            for line in done.stdout.splitlines() if line.startswith("| ") and ".yaml" in line}
    recipes = {p.name for p in (REPO / "configs").glob("*.yaml") if "model" in (yaml.safe_load(p.read_text()) or {})}
    assert set(rows) == recipes
    for name, cells in rows.items():
        rows_per_device, peak, tflop, small, mid, large = (float(c) for c in cells[2:8])
        assert rows_per_device > 0 and peak > 0 and tflop > 0, (name, cells)
        assert 0 < small <= mid <= large, (name, cells)  # more memory never fits fewer pairs
