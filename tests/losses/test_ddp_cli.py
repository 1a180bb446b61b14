"""A 2-process CPU DDP fit through the CLI with the chunked sigmoid loss (gloo ring between ranks)."""
from __future__ import annotations

import pytest
from tests.conftest import run_cli, tiny_fit_args


# 66 s to 3 min on the shared 2-core machine, depending on its load (two Lightning processes start).
@pytest.mark.slow
def test_two_process_ddp_fit_with_chunked_loss(tmp_path):
    # The tiny data has 4 shards, so split_dataset_by_node gives each of the 2 ranks 2 whole shards
    # and the same number of batches.
    args = tiny_fit_args(tmp_path, "--model.loss=siglip_lightning.ChunkedSigmoidLoss",
                         "--trainer.devices=2", "--trainer.strategy=ddp")
    args = [a for a in args if a != "--trainer.devices=1"]
    result = run_cli(args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    configs = list(tmp_path.rglob("config.yaml"))
    assert configs and "ChunkedSigmoidLoss" in configs[0].read_text()
    assert list(tmp_path.rglob("events.out.tfevents*")), "no TensorBoard log written"
