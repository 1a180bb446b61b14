"""SigLIPModule's AdamW: fused kernel by default on plain tensors, same update as the per-tensor loop."""
import copy

import torch

from siglip_lightning import SigLIPModule
from siglip_lightning.towers import TextTower, VisionTower


def _module(**kwargs):
    torch.manual_seed(0)
    return SigLIPModule(VisionTower(), TextTower(vocab_size=64), lr=1e-2, warmup_steps=0, total_steps=10, **kwargs)


def test_fused_choice():
    assert _module().use_fused_optimizer()
    assert not _module(fused_optimizer=False).use_fused_optimizer()


def test_fused_step_equals_the_per_tensor_step():
    # random gradients, not backprop: the key part of in_proj_bias gets ~1e-10 float-noise gradients
    # (it cannot change attention), which Adam blows up to lr-sized steps of random sign
    fused, plain = _module(), _module(fused_optimizer=False)
    start = copy.deepcopy(fused.state_dict())
    for module in (fused, plain):
        optimizer = module.configure_optimizers()["optimizer"]
        assert optimizer.defaults["fused"] is module.use_fused_optimizer()
        generator = torch.Generator().manual_seed(1)
        for _ in range(3):
            for param in module.parameters():
                param.grad = torch.randn(param.shape, generator=generator)
            optimizer.step()
    moved = 0
    for (name, a), b in zip(fused.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(a, start[name])
    assert moved == len(start)  # every tensor was updated (decay or not)
