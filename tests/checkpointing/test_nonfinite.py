"""Non-finite loss or gradients: the step is skipped and counted; N in a row stop the run."""
from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.helpers.fault_helpers import pair_loader, tiny_module
from siglip_lightning.checkpointing import NonFiniteError, NonFiniteGuard
from tests.helpers.drills import InjectNonFinite


class ParamHistory(Callback):
    """Copies of the parameters after every optimizer step (the model is tiny)."""

    def __init__(self) -> None:
        self.after = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.after[0] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def _fit(tmp_path, callbacks, max_steps=6, **module_kwargs):
    L.seed_everything(0)
    module = tiny_module(**module_kwargs)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, callbacks=callbacks, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=pair_loader())
    return trainer, module


def test_skips_and_counts_nonfinite_steps_and_names_the_tower(tmp_path, caplog):
    guard, history = NonFiniteGuard(max_consecutive=3), ParamHistory()
    injectors = [InjectNonFinite(steps=[2], target="loss"), InjectNonFinite(steps=[3], target="text_tower", value="inf")]
    with caplog.at_level(logging.WARNING, logger="siglip_lightning.checkpointing"):
        trainer, module = _fit(tmp_path, [guard, history, *injectors])
    assert trainer.global_step == 6  # skipped steps still count as steps (the batch is used up)
    assert guard.total_skipped == 2 and guard.consecutive == 0
    assert trainer.callback_metrics["train/skipped_nonfinite"].item() == 2
    # skipped steps (2 -> 3 and 3 -> 4) leave every parameter as it was; the others move them
    for step in range(6):
        before, after = history.after[step], history.after[step + 1]
        unchanged = all(torch.equal(before[n], after[n]) for n in before)
        assert unchanged == (step in (2, 3)), step
    assert all(torch.isfinite(p).all() for p in module.parameters())
    # the optimizer's own step counts saw only the 4 real steps
    steps = {int(s["step"]) for s in trainer.optimizers[0].state.values()}
    assert steps == {4}
    messages = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(messages) == 2, messages
    assert "step 2" in messages[0] and "loss" in messages[0] and "image_tower" in messages[0]
    assert "step 3" in messages[1] and "text_tower" in messages[1]
    assert "image_tower" not in messages[1] and "loss" not in messages[1].split(" at ")[0]


def test_stops_after_max_consecutive(tmp_path):
    guard = NonFiniteGuard(max_consecutive=3)
    injectors = [InjectNonFinite(steps=[1, 3, 4, 5], target="image_tower")]
    with pytest.raises(NonFiniteError, match=r"3 consecutive .*image_tower at step 5 .*nonfinite.max_consecutive"):
        _fit(tmp_path, [guard, *injectors], max_steps=10)
    assert guard.total_skipped == 4 and guard.consecutive == 3


def test_without_the_guard_nan_would_reach_the_weights(tmp_path):
    """The peer case: the same injection with no guard poisons the parameters (so the test above can fail)."""
    _, module = _fit(tmp_path, [InjectNonFinite(steps=[2], target="loss")], max_steps=4)
    assert not all(torch.isfinite(p).all() for p in module.parameters())
