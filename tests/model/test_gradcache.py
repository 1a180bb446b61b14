"""Gradient caching (model.micro_batch_size): the same loss and gradients as the whole batch at once,
through the plain function and through a Lightning fit; bad values and accumulate_grad_batches refused."""
from __future__ import annotations

import contextlib
from typing import Dict, List

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

import siglip_lightning.model.gradcache as gradcache
from tests.conftest import tiny_fit_args
from siglip_lightning import SigLIPModule, TextTower, VisionTower
from siglip_lightning.cli import cli_main
from siglip_lightning.errors import UserInputError
from siglip_lightning.losses import SigmoidLoss, SoftmaxLoss, TiledSigmoidLoss

BATCH = 7  # not a multiple of 3: the micro-batches are uneven

LOSSES = {"sigmoid": SigmoidLoss, "softmax": SoftmaxLoss, "tiled": lambda: TiledSigmoidLoss(tile=3)}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: on the shared 2-core machine a second thread mostly waits for the other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_module(loss: nn.Module, seed: int, **kwargs) -> SigLIPModule:
    torch.manual_seed(seed)
    image = VisionTower(image_size=16, patch_size=8, width=32, layers=1, heads=2)
    text = TextTower(vocab_size=64, context_length=8, width=32, layers=1, heads=2, output_dim=32)
    return SigLIPModule(image, text, loss=loss, **kwargs)


def random_batch(rows: int = BATCH, dtype=torch.float32):
    return torch.randn(rows, 3, 16, 16, dtype=dtype), torch.randint(0, 64, (rows, 8))


def gradients(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.requires_grad}


def assert_same_gradients(expected: Dict[str, torch.Tensor], actual: Dict[str, torch.Tensor], rtol=1e-4, atol=1e-6):
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("micro", [1, 3, BATCH])
def test_same_loss_and_gradients_as_the_whole_batch(loss_name, micro):
    # float64, so that float rounding (a different summation order) cannot hide a real difference
    seed = int(torch.randint(0, 2**31 - 1, ()))
    images, text = random_batch(dtype=torch.float64)
    reference = tiny_module(LOSSES[loss_name](), seed).double()
    expected_loss = reference.compute_loss({"image": images, "text": text})
    expected_loss.backward()

    module = tiny_module(LOSSES[loss_name](), seed).double()
    loss, surrogate = gradcache.cached_gradient_loss(module, images, text, micro)
    torch.testing.assert_close(loss, expected_loss.detach())
    torch.testing.assert_close(surrogate.detach(), expected_loss.detach())  # its value is the loss
    surrogate.backward()
    grads = gradients(module)
    assert {"logit_scale", "logit_bias"} <= set(grads) or loss_name == "softmax"
    assert_same_gradients(gradients(reference), grads, rtol=1e-9, atol=1e-12)


def test_inner_backward_passes_use_the_loss_scale_of_fp16_training():
    """With a GradScaler (16-mixed) Lightning scales the backward of the returned surrogate; the
    micro-batches backpropagated inside training_step must be scaled the same way."""

    class Scaler:
        def scale(self, tensor):
            return tensor * 1024.0

    images, text = random_batch(dtype=torch.float64)
    reference = tiny_module(SigmoidLoss(), 3).double()
    reference.compute_loss({"image": images, "text": text}).backward()
    module = tiny_module(SigmoidLoss(), 3).double()
    module._trainer = type("FakeTrainer", (), {"precision_plugin": type("Plugin", (), {"scaler": Scaler()})()})()
    _, surrogate = gradcache.cached_gradient_loss(module, images, text, 3)
    module._trainer = None
    Scaler().scale(surrogate).backward()  # what Lightning's MixedPrecision plugin does with it
    expected = {name: grad * 1024.0 for name, grad in gradients(reference).items()}
    assert_same_gradients(expected, gradients(module), rtol=1e-9, atol=1e-9)


def test_bf16_autocast_gives_the_whole_batch_gradient_up_to_bf16_rounding():
    images, text = random_batch()
    reference, module = tiny_module(SigmoidLoss(), 4), tiny_module(SigmoidLoss(), 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_loss = reference.compute_loss({"image": images, "text": text})
        loss, surrogate = gradcache.cached_gradient_loss(module, images, text, 2)
    expected_loss.backward()
    surrogate.backward()
    torch.testing.assert_close(loss.float(), expected_loss.detach().float(), rtol=2e-2, atol=0)
    expected, actual = gradients(reference), gradients(module)
    for name in expected:  # bf16 has 8 bits of mantissa: compare whole tensors, relative to their norm
        error = (actual[name] - expected[name]).norm() / expected[name].norm().clamp_min(1e-12)
        assert error < 0.05, (name, float(error))


class DropoutTower(nn.Module):
    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower, self.dropout = tower, nn.Dropout(0.5)

    def forward(self, inputs):
        return self.dropout(self.tower(inputs))


@pytest.mark.parametrize("replay", [True, False])
def test_dropout_masks_are_replayed_in_the_gradient_pass(replay, monkeypatch):
    """With dropout, the gradient is that of the masks drawn in the first (no-grad) pass; without
    the RNG replay the second pass draws other masks and the gradient is wrong."""
    if not replay:
        monkeypatch.setattr(gradcache._RngReplay, "replay", lambda self, index: contextlib.nullcontext())
    images, text = random_batch()
    module = tiny_module(SigmoidLoss(), 0)
    module.image_tower, module.text_tower = DropoutTower(module.image_tower), DropoutTower(module.text_tower)
    reference = tiny_module(SigmoidLoss(), 0)
    reference.image_tower, reference.text_tower = DropoutTower(reference.image_tower), DropoutTower(reference.text_tower)

    torch.manual_seed(5)
    _, surrogate = gradcache.cached_gradient_loss(module, images, text, 3)
    surrogate.backward()
    # the reference draws the masks in the same order as the no-grad pass: micro-batch by micro-batch
    torch.manual_seed(5)
    parts = [reference(i, t) for i, t in zip(torch.tensor_split(images, 3), torch.tensor_split(text, 3))]
    loss = reference.loss(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                          reference.logit_scale.exp(), reference.logit_bias)
    loss.backward()
    if replay:
        assert_same_gradients(gradients(reference), gradients(module))
    else:
        with pytest.raises(AssertionError):
            assert_same_gradients(gradients(reference), gradients(module))


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, "8"])
def test_bad_micro_batch_size_is_refused(bad):
    with pytest.raises(UserInputError, match="model.micro_batch_size must be a positive whole number"):
        tiny_module(SigmoidLoss(), 0, micro_batch_size=bad)


def test_accumulate_grad_batches_is_still_refused_and_points_at_micro_batch_size(tmp_path):
    with pytest.raises(UserInputError, match="accumulate_grad_batches=2 is not supported.*model.micro_batch_size"):
        cli_main(tiny_fit_args(tmp_path, "--trainer.accumulate_grad_batches=2"))


class GradRecorder(Callback):
    """Keeps every optimizer step's gradients (before clipping) and the loss Lightning saw."""

    def __init__(self) -> None:
        self.steps: List[Dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps.append(gradients(pl_module))


def _fit(root, *extra):
    recorder = GradRecorder()
    args = tiny_fit_args(root, "--seed_everything=0", "--data.shuffle_buffer=0", "--trainer.limit_val_batches=0",
                         "--trainer.gradient_clip_val=0.05", "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
                         f"--trainer.logger.save_dir={root}", *extra)
    cli = cli_main(args, trainer_defaults={"callbacks": [recorder]})
    return cli, recorder


def test_a_lightning_fit_with_micro_batches_matches_the_whole_batch_and_resumes(tmp_path):
    whole, whole_grads = _fit(tmp_path / "whole")
    micro, micro_grads = _fit(tmp_path / "micro", "--model.micro_batch_size=5")  # 16 rows: 4 micro-batches
    assert len(whole_grads.steps) == len(micro_grads.steps) == 2
    for expected, actual in zip(whole_grads.steps, micro_grads.steps):
        assert_same_gradients(expected, actual, rtol=1e-3, atol=1e-5)
    # after the AdamW steps, clipping (0.05 is below these gradient norms) and the schedule: the same weights
    for (name, a), b in zip(whole.model.state_dict().items(), micro.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert micro.trainer.optimizers[0].param_groups[0]["lr"] == whole.trainer.optimizers[0].param_groups[0]["lr"]
    metrics = (next((tmp_path / "micro").rglob("metrics.csv"))).read_text()
    assert "train/loss" in metrics and "train/skipped_nonfinite" in metrics
    torch.testing.assert_close(micro.trainer.callback_metrics["train/loss"],
                               whole.trainer.callback_metrics["train/loss"])

    # resume the micro-batched run from its checkpoint: optimizer and scheduler state come back
    ckpt = next((tmp_path / "micro").rglob("*.ckpt"))
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 2 and saved["lr_schedulers"] and saved["optimizer_states"][0]["state"]
    resumed, resumed_grads = _fit(tmp_path / "resumed", "--model.micro_batch_size=5", "--trainer.max_steps=3",
                                  f"--ckpt_path={ckpt}")
    assert resumed.trainer.global_step == 3 and len(resumed_grads.steps) == 1
    state = resumed.trainer.optimizers[0].state_dict()["state"]
    assert all(int(s["step"]) == 3 for s in state.values())  # AdamW moments continued, not restarted


def test_the_nonfinite_guard_skips_bad_micro_batched_steps(tmp_path):
    import lightning as L

    from tests.helpers.fault_helpers import pair_loader
    from tests.helpers.fault_helpers import tiny_module as fault_tiny_module
    from siglip_lightning.checkpointing import NonFiniteGuard
    from tests.helpers.drills import InjectNonFinite

    class Weights(Callback):
        def __init__(self) -> None:
            self.after = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.after.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    guard, weights = NonFiniteGuard(max_consecutive=3), Weights()
    injectors = [InjectNonFinite(steps=[1], target="loss"), InjectNonFinite(steps=[2], target="image_tower", value="inf")]
    L.seed_everything(0)
    module = fault_tiny_module(micro_batch_size=3)  # batches of 8: micro-batches of 3, 3, 2
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, callbacks=[guard, weights, *injectors], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=pair_loader())
    assert guard.total_skipped == 2 and trainer.global_step == 4
    moved = [any(not torch.equal(a[n], b[n]) for n in a) for a, b in zip(weights.after, weights.after[1:])]
    assert moved == [False, False, True]  # steps 1 and 2 were skipped, step 3 trained
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert {int(s["step"]) for s in trainer.optimizers[0].state.values()} == {2}
