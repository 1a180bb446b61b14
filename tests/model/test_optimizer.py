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


def _decay_by_name(module):
    owner = {id(p): name for name, p in module.named_parameters()}
    return {owner[id(p)]: group["weight_decay"] > 0 for group in module.parameter_groups() for p in group["params"]}


def test_kernels_mask_decays_dense_conv_and_attention_kernels_only():
    """big_vision's `.*/kernel$`: position embeddings, the MAP probe, token embeddings, biases, norms,
    t' and b are not decayed; every Linear / conv / attention projection weight is."""
    module = SigLIPModule(VisionTower(pool_type="map"), TextTower(vocab_size=64, embedding_dim=8),
                          weight_decay_mask="kernels")
    decayed = _decay_by_name(module)
    assert len(decayed) == len(list(module.parameters()))
    expected_on = set()
    for prefix, sub in module.named_modules():
        if isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d)):
            expected_on.add(f"{prefix}.weight")
        if isinstance(sub, torch.nn.MultiheadAttention):
            expected_on.add(f"{prefix}.in_proj_weight")
    assert {n for n, on in decayed.items() if on} == expected_on
    for name in ("image_tower.pos_embed", "image_tower.head.probe", "text_tower.positional_embedding",
                 "text_tower.token_embedding.table.weight", "logit_scale", "logit_bias"):
        assert decayed[name] is False, name
    for name in ("image_tower.patch_embed.weight", "text_tower.token_embedding.proj.weight",
                 "text_tower.text_projection.weight", "image_tower.head.attention.in_proj_weight"):
        assert decayed[name] is True, name


def test_matrices_mask_is_open_clips_rule():
    """open_clip_train excludes p.ndim < 2, names with bn / ln / bias, and logit_scale."""
    module = SigLIPModule(VisionTower(), TextTower(vocab_size=64), weight_decay_mask="matrices")
    for name, on in _decay_by_name(module).items():
        param = dict(module.named_parameters())[name]
        open_clip_excludes = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        assert on is (not open_clip_excludes), name


def test_unknown_mask_is_refused():
    import pytest

    with pytest.raises(ValueError, match="weight_decay_mask"):
        SigLIPModule(VisionTower(), TextTower(vocab_size=64), weight_decay_mask="everything")
