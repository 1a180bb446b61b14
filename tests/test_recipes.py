"""Paper recipe configs: every YAML parses; each runlocal variant fits 2 steps; resolution adaptation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from siglip_lightning import SigLIPModule, TextTower, VisionTower
from siglip_lightning.cli import cli_main
from siglip_lightning.model.init_from import load_initial_weights
from tests.conftest import REPO, tiny_fit_args

CONFIGS = REPO / "configs"
RECIPES = ["siglip_b16", "siglit", "msiglip", "siglip2"]
def _fit(*args: str):
    cli = cli_main(["fit", *args])
    assert cli.trainer.global_step == 2
    return cli


@pytest.mark.parametrize("recipe", RECIPES)
def test_runlocal_variant_fits_two_steps(recipe, tmp_path):
    cli = _fit("--config", str(CONFIGS / f"{recipe}.yaml"), "--config", str(CONFIGS / "runlocal" / f"{recipe}.yaml"),
               f"--trainer.default_root_dir={tmp_path}")
    module = cli.model
    if recipe == "siglit":  # the locked tower did not move and takes no optimizer state
        assert not any(p.requires_grad for p in module.image_tower.parameters())
        assert not module.image_tower.tower.training
        params = {id(p) for g in cli.trainer.optimizers[0].param_groups for p in g["params"]}
        assert not params & {id(p) for p in module.image_tower.parameters()}
    if recipe == "siglip2":  # every objective ran at the second step: the teacher was copied, then moved
        assert bool(module.teacher.initialised)
        assert {"train/locca", "train/silc", "train/tips", "train/total_loss"} <= set(cli.trainer.callback_metrics)
    if recipe == "msiglip":
        assert module.text_tower.token_embedding.table.weight.shape == (256, 8)


def test_resize_pos_embed_matches_timm_and_keeps_other_weights():
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    small = SigLIPModule(VisionTower(image_size=32, patch_size=8, width=32, layers=1, heads=2),
                         TextTower(vocab_size=64, context_length=8, width=32, layers=1, heads=2, output_dim=32))
    big = SigLIPModule(VisionTower(image_size=48, patch_size=8, width=32, layers=1, heads=2),
                       TextTower(vocab_size=64, context_length=8, width=32, layers=1, heads=2, output_dim=32))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "small.ckpt"
        torch.save({"state_dict": small.state_dict()}, path)
        notes = load_initial_weights(big, str(path))
    assert list(notes) == ["image_tower.pos_embed"]
    expected = resample_abs_pos_embed(small.image_tower.pos_embed.detach(), [6, 6], [4, 4], num_prefix_tokens=0,
                                      interpolation="bilinear", antialias=False)
    assert torch.allclose(big.image_tower.pos_embed, expected, atol=1e-6)
    for key, value in small.state_dict().items():
        if key != "image_tower.pos_embed":
            assert torch.equal(big.state_dict()[key], value), key


def test_resolution_adaptation_32_to_48_px_loads_and_trains(tmp_path):
    from timm.layers import resample_abs_pos_embed

    first = _fit(*tiny_fit_args(tmp_path / "px32")[1:], "--model.image_tower.init_args.image_size=32",
                 "--data.image_size=32")
    ckpt = sorted((tmp_path / "px32").rglob("*.ckpt"))[-1]
    source = first.model.image_tower.pos_embed.detach().clone()
    adapted = _fit("--config", str(CONFIGS / "resolution_adapt.yaml"),
                   "--config", str(CONFIGS / "runlocal" / "resolution_adapt.yaml"),
                   f"--model.init_from={ckpt}", f"--trainer.default_root_dir={tmp_path / 'px48'}")
    assert adapted.model.hparams.lr == pytest.approx(1e-5) and adapted.model.hparams.weight_decay == 0.0
    pos = adapted.model.image_tower.pos_embed.detach()
    assert pos.shape == (1, 36, 32)
    interpolated = resample_abs_pos_embed(source, [6, 6], [4, 4], num_prefix_tokens=0, interpolation="bilinear",
                                          antialias=False)
    # Two AdamW steps at lr <= 1e-5 move a weight by at most ~2e-5; a re-initialised table is ~0.2 away.
    assert (pos - interpolated).abs().max() < 1e-3
    assert (pos - interpolated).abs().max() > 0  # and it trained
    fresh = VisionTower(image_size=48, patch_size=8, width=32, layers=1, heads=2).pos_embed
    assert (fresh - interpolated).abs().max() > 0.05


def test_pretrained_image_tower_gets_scaled_lr_and_no_weight_decay():
    module = SigLIPModule(VisionTower(image_size=16, patch_size=8, width=32, layers=1, heads=2),
                          TextTower(vocab_size=64, context_length=8, width=32, layers=1, heads=2, output_dim=32),
                          lr=1e-3, weight_decay=0.1, image_tower_lr_scale=0.1, image_tower_weight_decay=False,
                          weight_decay_mask="matrices")
    owner = {id(p): name for name, p in module.named_parameters()}
    seen = 0
    for group in module.parameter_groups():
        for param in group["params"]:
            name, seen = owner[id(param)], seen + 1
            if name.startswith("image_tower."):
                assert group["lr"] == pytest.approx(1e-4) and group["weight_decay"] == 0.0, name
            else:
                assert group["lr"] == pytest.approx(1e-3), name
                assert group["weight_decay"] == (0.1 if param.ndim >= 2 and not name.startswith("logit_") else 0.0)
    assert seen == len(owner)
