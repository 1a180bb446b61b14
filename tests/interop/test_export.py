"""Export to / initialise from Hugging Face transformers and open_clip, checked against the peers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from siglip_lightning import SigLIPModule, TextTower, VisionTower
from siglip_lightning.errors import UserInputError
from siglip_lightning.interop.export import export_module
from siglip_lightning.interop.openclip import create_open_clip, register_timm_vit, timm_name
from siglip_lightning.interop.pretrained_towers import HFTextTower, HFVisionTower, OpenCLIPTextTower, OpenCLIPVisionTower
from tests.conftest import run_cli, tiny_fit_args

TOL = 1e-5


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random, non-default values everywhere (LayerNorm gains, biases, b), so no mapping hides behind init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return module.eval()


def _inputs(image_size: int, vocab: int, context: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, image_size, image_size, generator=gen), torch.randint(0, vocab, (4, context), generator=gen)


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export-fit")
    result = run_cli(tiny_fit_args(root))
    assert result.returncode == 0, result.stderr[-3000:]
    ckpts = sorted(root.rglob("*.ckpt"))
    assert ckpts, "the fit wrote no checkpoint"
    return ckpts[-1]


@pytest.mark.slow  # a CLI fit and an export in fresh processes: ~1 min alone, several on a loaded machine
def test_cli_export_hf_matches_lightning(trained_ckpt, tmp_path):
    from transformers import SiglipModel, SiglipTokenizer

    out = tmp_path / "hf"
    result = run_cli(["export", "--ckpt_path", str(trained_ckpt), "--format", "hf", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["layer_norm_eps"] == 1e-5 and config["text_config"]["layer_norm_eps"] == 1e-5
    module = SigLIPModule.load_from_checkpoint(trained_ckpt, map_location="cpu").eval()
    peer = SiglipModel.from_pretrained(out, local_files_only=True).eval()
    images, text = _inputs(16, 256, 8)
    with torch.no_grad():
        ours_img, ours_txt = module(images, text)
        theirs = peer(pixel_values=images, input_ids=text)
    assert (ours_img - theirs.image_embeds).abs().max() < TOL
    assert (ours_txt - theirs.text_embeds).abs().max() < TOL
    assert torch.allclose(peer.logit_scale.reshape(()), module.logit_scale.detach())
    assert torch.allclose(peer.logit_bias.reshape(()), module.logit_bias.detach())
    # The tokenizer: exact SentencePiece model shipped; SiglipTokenizer agrees without punctuation.
    assert (out / "spiece.model").is_file()
    from siglip_lightning.text.sentencepiece import SentencePieceTokenizer

    ours_tok = SentencePieceTokenizer(out / "spiece.model", context_length=8)
    hf_tok = SiglipTokenizer.from_pretrained(out, local_files_only=True)
    captions = ["a red circle on a blue background", "Two Green Squares"]
    hf_ids = hf_tok(captions, padding="max_length", max_length=8, truncation=True, return_tensors="pt")["input_ids"]
    assert torch.equal(hf_ids, ours_tok(captions))


@pytest.mark.slow
def test_cli_export_open_clip_matches_lightning(trained_ckpt, tmp_path):
    out = tmp_path / "oc"
    result = run_cli(["export", "--ckpt_path", str(trained_ckpt), "--format", "open_clip", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    module = SigLIPModule.load_from_checkpoint(trained_ckpt, map_location="cpu").eval()
    peer = create_open_clip(f"local-dir:{out}")
    images, text = _inputs(16, 256, 8)
    with torch.no_grad():
        ours_img, ours_txt = module(images, text)
        assert (ours_img - peer.encode_image(images, normalize=True)).abs().max() < TOL
        assert (ours_txt - peer.encode_text(text, normalize=True)).abs().max() < TOL
    assert torch.allclose(peer.logit_bias, module.logit_bias.detach())


def test_bottleneck_embedding_exports_as_exact_dense_table(tmp_path):
    from transformers import SiglipModel

    torch.manual_seed(0)
    module = _perturbed(SigLIPModule(
        VisionTower(image_size=16, patch_size=8, width=32, layers=2, heads=2),
        TextTower(vocab_size=300, context_length=8, width=24, layers=1, heads=2, output_dim=32, embedding_dim=6)), 0)
    assert module.text_tower.token_embedding.table.weight.shape == (300, 6)
    export_module(module, "hf", tmp_path)
    peer = SiglipModel.from_pretrained(tmp_path, local_files_only=True).eval()
    images, text = _inputs(16, 300, 8)
    with torch.no_grad():
        ours_img, ours_txt = module(images, text)
        theirs = peer(pixel_values=images, input_ids=text)
    assert (ours_txt - theirs.text_embeds).abs().max() < TOL
    assert (ours_img - theirs.image_embeds).abs().max() < TOL


def test_init_from_hf_folder_matches_transformers(tmp_path):
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(1)
    config = SiglipConfig(
        text_config=dict(vocab_size=100, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=10, projection_size=32, layer_norm_eps=1e-6),
        vision_config=dict(hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                           image_size=24, patch_size=8, layer_norm_eps=1e-6))
    peer = _perturbed(SiglipModel(config), 2)
    peer.save_pretrained(tmp_path)
    image_tower, text_tower = HFVisionTower(str(tmp_path)).eval(), HFTextTower(str(tmp_path)).eval()
    images, text = _inputs(24, 100, 10)
    with torch.no_grad():
        out = peer(pixel_values=images, input_ids=text)
        assert (F.normalize(image_tower(images), dim=-1) - out.image_embeds).abs().max() < TOL
        assert (F.normalize(text_tower(text), dim=-1) - out.text_embeds).abs().max() < TOL
    assert image_tower.norm.eps == 1e-6 and text_tower.ln_final.eps == 1e-6


def _tiny_open_clip_config(tmp_path: Path) -> str:
    """A tiny SigLIP-layout open_clip architecture (timm MAP ViT + bidirectional text), registered by name."""
    import open_clip

    shape = dict(image_size=24, patch_size=8, width=32, layers=2, heads=4, mlp_ratio=2.0, norm_eps=1e-6)
    name = "tiny-siglip-test"
    cfg = {"embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
           "vision_cfg": {"image_size": 24, "timm_model_name": register_timm_vit(timm_name(shape)),
                          "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
           "text_cfg": {"context_length": 10, "vocab_size": 100, "width": 24, "heads": 2, "layers": 2,
                        "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                        "act_kwargs": {"approximate": "tanh"}, "norm_kwargs": {"eps": 1e-6}}}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "configs")
    return name


def test_init_from_open_clip_checkpoint_matches_open_clip(tmp_path):
    import open_clip

    name = _tiny_open_clip_config(tmp_path)
    torch.manual_seed(3)
    peer = _perturbed(open_clip.create_model(name), 4)
    ckpt = tmp_path / "tiny.pt"
    torch.save(peer.state_dict(), ckpt)
    image_tower = OpenCLIPVisionTower(name, str(ckpt)).eval()
    text_tower = OpenCLIPTextTower(name, str(ckpt)).eval()
    images, text = _inputs(24, 100, 10)
    with torch.no_grad():
        assert (F.normalize(image_tower(images), dim=-1) - peer.encode_image(images, normalize=True)).abs().max() < TOL
        assert (F.normalize(text_tower(text), dim=-1) - peer.encode_text(text, normalize=True)).abs().max() < TOL
    # ... and back out again: the exported state dict is the one we read.
    module = SigLIPModule(image_tower, text_tower, init_logit_scale=float(peer.logit_scale.detach()),
                          init_logit_bias=float(peer.logit_bias.detach()))
    export_module(module, "open_clip", tmp_path / "out")
    again = create_open_clip(f"local-dir:{tmp_path / 'out'}")
    for key, value in peer.state_dict().items():
        assert torch.allclose(again.state_dict()[key], value), key


def test_export_rejects_layouts_the_formats_cannot_hold(tmp_path, capsys):
    module = SigLIPModule(VisionTower(image_size=16, patch_size=8, width=32, layers=1, heads=2, pool_type="tok"),
                          TextTower(vocab_size=64, context_length=8, width=32, layers=1, heads=2, output_dim=32))
    with pytest.raises(UserInputError, match="pool_type"):
        export_module(module, "hf", tmp_path)
    from siglip_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--format", "hf", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "checkpoint not found" in capsys.readouterr().err
