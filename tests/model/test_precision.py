"""t', b and LayerNorm gains train under every precision the configs use, as they do in float32.

bfloat16 cannot hold t' = log 10 (it rounds to 2.296875) and its spacing at b = -10 is 0.0625, so
with weights stored in bfloat16 (``bf16-true``, XLA's bf16) AdamW steps of ~1e-3 round away and t',
b and norm gains near 1.0 never move. The module keeps them in float32 (model/precision.py).
"""
from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from siglip_lightning import SigLIPModule, TextTower, VisionTower

STEPS = 200
PRECISIONS = ["bf16-mixed", "bf16-true"]  # the precisions configs/ use besides 32-true


def _batches(n: int):
    """Learnable pairs (a class's image template + noise, captioned by the class's tokens), so that
    t' and b move steadily rather than by noise."""
    g = torch.Generator().manual_seed(0)
    templates = torch.randn(32, 3, 16, 16, generator=g)
    captions = torch.randint(0, 64, (32, 8), generator=g)
    classes = torch.randint(0, 32, (n, 16), generator=g)
    images = templates[classes] + 0.5 * torch.randn(n, 16, 3, 16, 16, generator=g)
    return [{"image": images[i], "text": captions[classes[i]]} for i in range(n)]


class Trajectory(L.Callback):
    """t', b and the mean |gain - 1| of the text tower's final LayerNorm after every optimizer step."""

    def __init__(self) -> None:
        self.values = {"t'": [], "b": [], "gain": []}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values["t'"].append(float(pl_module.logit_scale.detach()))
        self.values["b"].append(float(pl_module.logit_bias.detach()))
        self.values["gain"].append(float((pl_module.text_tower.ln_final.weight.detach().float() - 1).abs().mean()))


def _train(precision: str):
    torch.manual_seed(0)
    module = SigLIPModule(VisionTower(image_size=16, patch_size=8, width=32, layers=1, heads=2),
                          TextTower(vocab_size=64, context_length=8, width=32, layers=1, heads=2, output_dim=32),
                          lr=1e-2, warmup_steps=10, total_steps=STEPS)
    trajectory = Trajectory()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_steps=STEPS, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[trajectory])
    trainer.fit(module, DataLoader(_batches(STEPS), batch_size=None))
    dtypes = {module.logit_scale.dtype, module.logit_bias.dtype, module.text_tower.ln_final.weight.dtype}
    return {key: torch.tensor(values, dtype=torch.float64) for key, values in trajectory.values.items()}, dtypes


START = {"t'": math.log(10), "b": -10.0, "gain": 0.0}


@pytest.fixture(scope="module")
def float32_run():
    return _train("32-true")


def test_float32_reference_moves(float32_run):
    values, _ = float32_run
    for key, start in START.items():
        assert (values[key] - start).abs().max() > 0.02, key


@pytest.mark.parametrize("precision", PRECISIONS)
def test_logit_scale_bias_and_norms_train_as_in_float32(precision, float32_run):
    """Each value travels as far from its start as in the float32 run (between half and twice as far:
    bf16 arithmetic changes the path); a frozen value travels nowhere (ratio 0)."""
    reference, _ = float32_run
    values, dtypes = _train(precision)
    assert dtypes == {torch.float32}, dtypes
    for key, start in START.items():
        ratio = float((values[key] - start).abs().max() / (reference[key] - start).abs().max())
        assert 0.5 <= ratio <= 2.0, (key, ratio)


def test_bf16_conversion_keeps_exact_float32_values():
    module = SigLIPModule(VisionTower(image_size=16, patch_size=8, width=32, layers=1, heads=2),
                          TextTower(vocab_size=64, context_length=8, width=32, layers=1, heads=2, output_dim=32))
    module.to(dtype=torch.bfloat16)
    assert module.logit_scale.dtype == torch.float32 and float(module.logit_scale) == pytest.approx(math.log(10), abs=1e-7)
    assert module.text_tower.ln_final.weight.dtype == torch.float32
    assert module.image_tower.patch_embed.weight.dtype == torch.bfloat16  # everything else is converted
    module.double()
    assert module.logit_scale.dtype == torch.float64  # float64 (tests) is a conversion like any other
