"""Trainer settings of the committed configs read as per-device layouts."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from siglip_lightning.errors import UserInputError
from siglip_lightning.plan.strategy import gradient_share, layout_of, resident_bytes

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _trainer(*names: str) -> dict:
    merged: dict = {}
    for name in names:
        merged.update(yaml.safe_load((CONFIGS / name).read_text())["trainer"])
    return merged


def test_recipe_ddp_fsdp_and_deepspeed_layouts():
    ddp = layout_of(_trainer("siglip_b16.yaml"))
    assert (ddp.kind, ddp.world, ddp.shard, ddp.bucket_view) == ("ddp", 128, 1, False)
    viewed = layout_of(_trainer("siglip_b16.yaml", "strategies/ddp.yaml"))
    assert viewed.bucket_view and gradient_share(viewed) == 0.0 and gradient_share(ddp) == 1.0
    fsdp = layout_of(_trainer("siglip_b16.yaml", "strategies/fsdp.yaml"))
    assert (fsdp.kind, fsdp.world, fsdp.shard) == ("fsdp", 128, 8)  # sharded within a node (HSDP)
    zero = layout_of(_trainer("siglip_b16.yaml", "strategies/deepspeed.yaml"))
    assert (zero.kind, zero.shard) == ("zero2", 128)
    assert layout_of(_trainer("quickstart.yaml")).kind == "single"


def test_resident_bytes_follow_the_sharding():
    fsdp = layout_of({"devices": 4, "strategy": {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"}})
    blocks = [100, 100, 100]
    held = resident_bytes(fsdp, params=1000, trainable=1000, optimizer=2000, blocks=blocks)
    assert held == {"parameters": 250, "optimizer state": 500, "FSDP gathered": (1000 - 300) + 3 * 100}
    ddp = layout_of({"devices": 4, "strategy": "ddp"})
    assert resident_bytes(ddp, 1000, 800, 1600, blocks) == {"parameters": 1000, "optimizer state": 1600,
                                                             "DDP buckets": 800}


def test_an_unknown_strategy_is_one_clear_error():
    with pytest.raises(UserInputError, match="does not know trainer.strategy='fancy'"):
        layout_of({"devices": 2, "strategy": "fancy"})
