"""Checkpoints hold only safe types: they load with torch.load(weights_only=True)."""
from __future__ import annotations

import io

import lightning as L
import pytest
import torch

from tests.helpers.fault_helpers import pair_loader, tiny_module
from siglip_lightning import SigLIPModule, SoftmaxLoss, TextTower, VisionTower
from siglip_lightning.checkpointing import RNGStateCallback, ResumableCheckpoint


def test_python_built_module_checkpoint_loads_weights_only(tmp_path):
    L.seed_everything(0)
    module = tiny_module(loss=SoftmaxLoss())
    assert "image_tower" not in module.hparams and "loss" not in module.hparams
    assert module.hparams.lr == 1e-3  # plain values are still recorded
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[ResumableCheckpoint(every_n_train_steps=2), RNGStateCallback()])
    trainer.fit(module, train_dataloaders=pair_loader())
    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["global_step"] == 2
    assert "RNGStateCallback" in checkpoint["callbacks"]
    # the towers are passed again, as Lightning recommends for nn.Module arguments
    restored = SigLIPModule.load_from_checkpoint(
        path, weights_only=True,
        image_tower=VisionTower(image_size=16, patch_size=8, width=32, layers=1, heads=2),
        text_tower=TextTower(vocab_size=64, context_length=8, width=32, layers=1, heads=2, output_dim=32),
        loss=SoftmaxLoss())
    for name, value in module.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], value)


def test_module_objects_in_a_checkpoint_would_not_load_weights_only():
    """Why the towers are left out of hparams: pickled modules are refused by the safe loader."""
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": {"image_tower": VisionTower(image_size=16, patch_size=8, width=32, layers=1,
                                                                heads=2)}}, buffer)
    buffer.seek(0)
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        torch.load(buffer, weights_only=True)
