"""``ResumableCheckpoint`` keeps one ``last.ckpt`` per run folder: no ``last-v1.ckpt`` when two of them
save into the same folder, or when the same command runs again there."""
from __future__ import annotations

import lightning as L
import torch

from siglip_lightning.checkpointing import ResumableCheckpoint
from tests.helpers.fault_helpers import pair_loader, tiny_module


def _fit(root, steps: int) -> None:
    callbacks = [ResumableCheckpoint(save_last=True, every_n_train_steps=2),
                 ResumableCheckpoint(save_last=True, save_top_k=0, every_n_train_steps=1)]
    trainer = L.Trainer(default_root_dir=str(root), max_steps=steps, callbacks=callbacks, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(tiny_module(), pair_loader(n=32, batch_size=8))


def test_two_callbacks_and_a_second_run_write_one_last_ckpt(tmp_path):
    _fit(tmp_path, 3)
    _fit(tmp_path, 4)  # the same command again, without --ckpt_path: a new run over the same folder
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "last.ckpt" in names and not [n for n in names if n.startswith("last-v")], names
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
