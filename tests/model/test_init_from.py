"""model.init_from reads weights only: a checkpoint that would run code when unpickled is refused."""
from __future__ import annotations

import os

import pytest
import torch

from siglip_lightning import SigLIPModule, TextTower, VisionTower
from siglip_lightning.errors import UserInputError
from siglip_lightning.model.init_from import load_initial_weights

MARKER = "init_from_ran_code"


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker_path: str) -> None:
        self.marker_path = marker_path

    def __reduce__(self):
        return (os.system, (f"touch {self.marker_path}",))


def _module() -> SigLIPModule:
    return SigLIPModule(VisionTower(image_size=16, patch_size=8, width=16, layers=1, heads=2),
                        TextTower(vocab_size=64, context_length=8, width=16, layers=1, heads=2, output_dim=16))


def test_init_from_refuses_a_pickle_that_would_run_code(tmp_path):
    source = _module()
    marker = tmp_path / MARKER
    checkpoint = {"state_dict": source.state_dict(), "extra": RunsCode(str(marker))}
    path = tmp_path / "evil.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(UserInputError, match="weights only"):
        load_initial_weights(_module(), str(path))
    assert not marker.exists(), "loading the checkpoint ran code"


def test_init_from_loads_plain_weights_exactly(tmp_path):
    source = _module()
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    target = _module()
    assert load_initial_weights(target, str(path)) == {}
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)
