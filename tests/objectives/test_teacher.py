"""The EMA teacher: copied from the student at its start, no gradient, the EMA formula after every optimizer
step; objectives before their start stay untouched; the module's objectives train through Lightning."""
from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from tests.objectives.helpers import random_batch, tiny_module


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])


class Watch(Callback):
    """Teacher and student (tower + SILC head) before each optimizer step and after each batch."""

    def __init__(self):
        self.before, self.after = [], []

    def _state(self, module):
        silc = module.objectives[1]
        return {"teacher": flat(module.teacher.tower), "teacher_head": flat(module.teacher.heads[silc.teacher_key]),
                "student": flat(module.image_tower), "student_head": flat(silc.head),
                "initialised": bool(module.teacher.initialised), "step": module.trainer.global_step,
                "grads": [p.grad for p in module.teacher.parameters()]}

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.before.append(self._state(module))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after.append(self._state(module))


def fit(module, steps, callbacks=(), root=None):
    batches = [random_batch(4, seed=s) for s in range(steps)]
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                        default_root_dir=root)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer


def test_teacher_starts_as_the_student_then_follows_the_ema_formula(tmp_path):
    torch.manual_seed(0)
    module = tiny_module(teacher_momentum=0.9)
    for objective in module.objectives[1:]:
        objective.start = 0.5  # of 4 steps: on from step 2
    silc_head_at_init = flat(module.objectives[1].head)
    watch = Watch()
    fit(module, 4, [watch], tmp_path)
    m = 0.9
    for step in (0, 1):  # before the start: not initialised, never updated, SILC's head untouched (no decay)
        assert not watch.after[step]["initialised"]
        torch.testing.assert_close(watch.after[step]["student_head"], silc_head_at_init, rtol=0, atol=0)
    for step in (2, 3):
        before, after = watch.before[step], watch.after[step]
        assert after["initialised"] and all(g is None for g in before["grads"])
        # the teacher before this step's update: the student before the step (copy at the start) or the last EMA
        previous = watch.after[step - 1]
        t_old = previous["student"] if step == 2 else previous["teacher"]
        h_old = previous["student_head"] if step == 2 else previous["teacher_head"]
        torch.testing.assert_close(before["teacher"], t_old, rtol=0, atol=0)
        torch.testing.assert_close(after["teacher"], m * t_old + (1 - m) * after["student"], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(after["teacher_head"], m * h_old + (1 - m) * after["student_head"],
                                   rtol=1e-6, atol=1e-7)
        assert not torch.equal(after["teacher"], after["student"])  # it lags the student
    params = {id(p) for g in module.trainer.optimizers[0].param_groups for p in g["params"]}
    assert not params & {id(p) for p in module.teacher.parameters()}  # the optimizer never sees the teacher
    assert params >= {id(p) for o in module.objectives for p in o.parameters()}  # it trains every objective


def test_objective_parameters_get_weight_decay_by_the_kernel_mask():
    module = tiny_module(weight_decay=0.1, weight_decay_mask="kernels")
    owner = {id(p): n for n, p in module.named_parameters()}
    decay = {owner[id(p)]: g["weight_decay"] for g in module.parameter_groups() for p in g["params"]}
    assert decay["objectives.0.decoder.head.weight"] == 0.1
    assert decay["objectives.0.decoder.blocks.layers.0.multihead_attn.in_proj_weight"] == 0.1
    assert decay["objectives.0.decoder.token_embedding.weight"] == 0.0  # embeddings are not kernels
    assert decay["objectives.0.decoder.head.bias"] == 0.0
    assert decay["objectives.2.mask_token"] == 0.0
    assert not any(name.startswith("teacher.") for name in decay)
