"""SILC self-distillation and TIPS masked prediction against their formulas, written out in float64."""
from __future__ import annotations

import pytest
import torch

from siglip_lightning.objectives.context import StepContext
from siglip_lightning.objectives.heads import update_center
from siglip_lightning.objectives.views import GLOBAL_SCALE, LOCAL_SCALE, crop_views, random_patch_mask, view_generator
from tests.objectives.helpers import random_batch, tiny_module


def cross_entropy(student, teacher, center, t_s, t_t):
    """-sum_k softmax((t - c)/tau_t)_k log softmax(s/tau_s)_k, by hand."""
    p = ((teacher - center) / t_t).exp()
    p = p / p.sum(-1, keepdim=True)
    log_q = student / t_s - (student / t_s).exp().sum(-1, keepdim=True).log()
    return -(p * log_q).sum(-1)


def setup(seed=0):
    module = tiny_module(seed=seed).double()
    module.teacher.copy_from(module.image_tower, {o.teacher_key: o.head for o in module.objectives[1:]})
    with torch.no_grad():  # a teacher unlike the student, and non-zero centres
        for p in module.teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for o in module.objectives[1:]:
            o.center.copy_(torch.randn(o.center.shape, dtype=o.center.dtype) * 0.1)
    batch = random_batch(3)
    batch["image"] = batch["image"].double()
    return module, batch


@pytest.mark.parametrize("local_size", [None, 8])
def test_silc_per_example_matches_formula_and_updates_the_center(local_size):
    module, batch = setup()
    silc = module.objectives[1]
    silc.local_size = local_size
    center = silc.center.clone()
    got = silc.per_example(StepContext(module.image_tower, batch, step=7, rank=1, teacher=module.teacher))
    tower, teacher = module.image_tower, module.teacher
    global_view = crop_views(batch["image"], 1, view_generator(7, 1, 0), GLOBAL_SCALE)
    local = crop_views(batch["image"], 2, view_generator(7, 1, 1), LOCAL_SCALE, local_size)
    assert local.shape[-1] == (local_size or 16)
    with torch.no_grad():
        t_out = teacher.heads[silc.teacher_key](teacher.tower(global_view))  # [b, K]
    if local_size:  # a 2 x 2 patch grid: the 4 x 4 learned positions resized by hand (antialiased bilinear)
        rows = torch.tensor([[3, 3, 1, 0], [0, 1, 3, 3]], dtype=torch.float64) / 7  # triangle of width 2, normalised
        positions = torch.einsum("hi,wj,ijd->hwd", rows, rows, tower.pos_embed[0].reshape(4, 4, -1)).reshape(1, 4, -1)
        x = tower.patch_embed(local).flatten(2).transpose(1, 2) + positions
        s_out = silc.head(tower.head(tower.norm(tower.transformer(x)))).reshape(2, 3, -1)
    else:
        s_out = silc.head(tower(local)).reshape(2, 3, -1)  # view-major
    expected = (cross_entropy(s_out[0], t_out, center, 0.1, 0.04) + cross_entropy(s_out[1], t_out, center, 0.1, 0.04)) / 2
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(silc.center, 0.9 * center + 0.1 * t_out.mean(0), rtol=1e-12, atol=1e-12)
    got.sum().backward()  # the student gets gradients; the teacher none
    assert silc.head.prototypes.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_tips_per_example_matches_formula():
    module, batch = setup(1)
    tips = module.objectives[2]
    center = tips.center.clone()
    got = tips.per_example(StepContext(module.image_tower, batch, step=2, rank=0, teacher=module.teacher))
    tower, teacher = module.image_tower, module.teacher
    view = crop_views(batch["image"], 1, view_generator(2, 0, 0), GLOBAL_SCALE)
    patches = (16 // 4) ** 2
    mask = random_patch_mask(3, patches, 0.5, view_generator(2, 0, 2))
    assert (mask.sum(1) == patches // 2).all()
    with torch.no_grad():
        t_tokens, _ = teacher.tower.forward_tokens(view)
    # the student's masked view, embedded by hand: mask token in place of the patch embedding, then positions
    x = tower.patch_embed(view).flatten(2).transpose(1, 2)
    x = torch.where(mask[..., None], tips.mask_token, x)
    s_tokens = tower.norm(tower.transformer(x + tower.pos_embed))
    for i in range(3):
        where = mask[i].nonzero()[:, 0]
        t_out = teacher.heads[tips.teacher_key](t_tokens[i, where])
        s_out = tips.head(s_tokens[i, where])
        expected = cross_entropy(s_out, t_out, center, 0.1, 0.04).mean()
        assert float(got[i].detach()) == pytest.approx(float(expected.detach()), rel=1e-9)
    got.sum().backward()
    assert tips.mask_token.grad.abs().sum() > 0  # the mask token is learned


def test_center_update_is_the_running_mean():
    center = torch.randn(5, dtype=torch.float64)
    out = torch.randn(2, 3, 5, dtype=torch.float64)
    expected = 0.7 * center + 0.3 * out.reshape(6, 5).mean(0)
    update_center(center, out, 0.7)
    torch.testing.assert_close(center, expected)


def test_views_are_a_function_of_step_and_rank():
    images = torch.randn(2, 3, 16, 16)
    same = [crop_views(images, 2, view_generator(5, 0, 1), LOCAL_SCALE) for _ in range(2)]
    torch.testing.assert_close(same[0], same[1], rtol=0, atol=0)
    assert not torch.equal(same[0], crop_views(images, 2, view_generator(6, 0, 1), LOCAL_SCALE))
    assert not torch.equal(same[0], crop_views(images, 2, view_generator(5, 1, 1), LOCAL_SCALE))
