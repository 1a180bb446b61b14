"""Scale-out paths: 2-process DDP and FSDP2 fits on CPU (gloo) through the CLI; gradient
checkpointing and the gradient-accumulation guard."""
from __future__ import annotations

import pytest
import torch

from siglip_lightning import SigLIPModule, TextTower, VisionTower
from siglip_lightning.cli import cli_main
from siglip_lightning.errors import UserInputError
from tests.conftest import REPO, run_cli, tiny_fit_args

STRATEGIES = REPO / "configs" / "strategies"


@pytest.mark.slow  # two processes each: ~40 s alone, minutes on a loaded machine
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_cpu_fit(strategy, tmp_path):
    result = run_cli(tiny_fit_args(tmp_path, "--config", str(STRATEGIES / f"{strategy}.yaml"), "--trainer.devices=2"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Starting with 2 processes" in result.stderr + result.stdout
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    ckpt = sorted(tmp_path.rglob("*.ckpt"))[-1]
    module = SigLIPModule.load_from_checkpoint(ckpt, map_location="cpu")  # a full, loadable state dict
    fresh = SigLIPModule.load_from_checkpoint(ckpt, map_location="cpu")
    assert torch.isfinite(module.logit_scale)
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), fresh.state_dict().values()))


def test_accumulate_grad_batches_is_refused(tmp_path):
    with pytest.raises(UserInputError, match="accumulate_grad_batches=2 is not supported"):
        cli_main(tiny_fit_args(tmp_path, "--trainer.accumulate_grad_batches=2"))


def test_grad_checkpointing_gives_the_same_values_and_gradients():
    torch.manual_seed(0)
    images, text = torch.randn(3, 3, 16, 16), torch.randint(0, 64, (3, 8))
    outputs = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        towers = (VisionTower(image_size=16, patch_size=8, width=32, layers=2, heads=2, grad_checkpointing=checkpointing),
                  TextTower(vocab_size=64, context_length=8, width=32, layers=2, heads=2, output_dim=32,
                            grad_checkpointing=checkpointing))
        module = SigLIPModule(*towers)
        loss = module.compute_loss({"image": images, "text": text})
        loss.backward()
        outputs.append((loss.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert len(outputs[0][1]) == len(outputs[1][1])
    for a, b in zip(outputs[0][1], outputs[1][1]):
        assert torch.allclose(a, b, atol=1e-6)
