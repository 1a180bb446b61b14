"""To and from open_clip ``CustomTextCLIP`` models (timm ViT with a MAP head + ``TextTransformer``).

open_clip builds its SigLIP models from a timm ViT (``global_pool='map'``) and its own
``TextTransformer``. Our text tower *is* a ``TextTransformer``, so its keys carry over under
``text.``; the image tower maps onto timm's layout under ``visual.trunk.`` (packed qkv stays packed;
the MAP head's packed in_proj splits into timm's ``q`` and ``kv``).

An export names its image trunk so that plain open_clip + timm build it (``interop/openclip_timm.py``:
timm's own SigLIP name, or a timm ``local-dir:`` config). :func:`register_timm_vit` / :func:`timm_name`
remain for callers that build open_clip configs by hand (tests, older exports): a registered timm name
encoding the shape (``siglip_lightning_vit_i32_p8_w64_d2_h4_f256_eps5``), tanh-GELU like our towers.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from safetensors.torch import save_file
from torch import nn

from siglip_lightning.errors import UserInputError
from siglip_lightning.interop import openclip_timm
from siglip_lightning.interop.keys import TIMM_BLOCK, dense_text_state, linear_pairs, text_shape, vision_shape
from siglip_lightning.towers import TextTower, VisionTower

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
_NAME = re.compile(r"^siglip_lightning_vit_i(\d+)_p(\d+)_w(\d+)_d(\d+)_h(\d+)_f(\d+)_eps(\d+)$")


def timm_name(shape: Dict) -> str:
    """The timm model name that encodes a VisionTower shape."""
    eps_exp = -math.log10(shape["norm_eps"])
    if abs(eps_exp - round(eps_exp)) > 1e-9:
        raise UserInputError(f"open_clip export needs a LayerNorm eps of 1e-N, got {shape['norm_eps']}")
    hidden = round(shape["width"] * shape["mlp_ratio"])
    return (f"siglip_lightning_vit_i{shape['image_size']}_p{shape['patch_size']}_w{shape['width']}"
            f"_d{shape['layers']}_h{shape['heads']}_f{hidden}_eps{round(eps_exp)}")


def register_timm_vit(name: str) -> str:
    """Register ``name`` (from :func:`timm_name`) as a timm model, once; returns the name."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    match = _NAME.match(name)
    if match is None:
        raise UserInputError(f"{name!r} is not a siglip_lightning timm model name")
    if timm.is_model(name):
        return name
    image, patch, width, depth, heads, hidden, eps_exp = (int(g) for g in match.groups())

    def build(pretrained: bool = False, **kwargs) -> VisionTransformer:
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        kwargs.setdefault("global_pool", "map")
        return VisionTransformer(img_size=image, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
                                 mlp_ratio=hidden / width, class_token=False, act_layer="gelu_tanh",
                                 norm_layer=partial(nn.LayerNorm, eps=10.0**-eps_exp), **kwargs)

    build.__name__ = name
    register_model(build)
    return name


def _vision_pairs(layers: int) -> List[Tuple[str, str]]:
    pairs = [("pos_embed", "pos_embed"), ("head.probe", "attn_pool.latent")]
    pairs += linear_pairs("patch_embed", "patch_embed.proj") + linear_pairs("norm", "norm")
    for i in range(layers):
        for ours, theirs in TIMM_BLOCK:
            suffix = ("_weight", "_bias") if ours == "attn.in_proj" else (".weight", ".bias")
            pairs += [(f"transformer.resblocks.{i}.{ours}{s}", f"blocks.{i}.{theirs}.{s[1:]}") for s in suffix]
    for ours, theirs in [("head.attention.out_proj", "attn_pool.proj"), ("head.norm", "attn_pool.norm"),
                         ("head.mlp.0", "attn_pool.mlp.fc1"), ("head.mlp.2", "attn_pool.mlp.fc2")]:
        pairs += linear_pairs(ours, theirs)
    return pairs


def vision_to_timm(state: Dict[str, torch.Tensor], layers: int, width: int) -> Dict[str, torch.Tensor]:
    out = {theirs: state[ours].clone() for ours, theirs in _vision_pairs(layers)}
    for kind in ("weight", "bias"):
        packed = state[f"head.attention.in_proj_{kind}"]
        out[f"attn_pool.q.{kind}"], out[f"attn_pool.kv.{kind}"] = packed[:width].clone(), packed[width:].clone()
    return out


def vision_from_timm(state: Dict[str, torch.Tensor], layers: int) -> Dict[str, torch.Tensor]:
    out = {ours: state[theirs] for ours, theirs in _vision_pairs(layers)}
    for kind in ("weight", "bias"):
        out[f"head.attention.in_proj_{kind}"] = torch.cat([state[f"attn_pool.q.{kind}"], state[f"attn_pool.kv.{kind}"]])
    return out


def open_clip_config(image_tower: VisionTower, text_tower: TextTower, out_dir: Path) -> Tuple[Dict, float]:
    """(open_clip ``model_cfg``: a CustomTextCLIP with a timm MAP tower and a bidirectional text tower,
    the trunk's residual-stream scale from :func:`openclip_timm.vision_cfg`)."""
    v, t = vision_shape(image_tower), text_shape(text_tower)
    if t["output_dim"] != v["width"]:
        raise UserInputError(f"text output_dim {t['output_dim']} must equal the image tower width {v['width']}")
    vision, scale = openclip_timm.vision_cfg(v, out_dir)
    return {
        "embed_dim": v["width"],
        "init_logit_bias": -10,  # makes open_clip create a logit_bias parameter; the weights overwrite it
        "custom_text": True,
        "vision_cfg": vision,
        "text_cfg": {"context_length": t["context_length"], "vocab_size": t["vocab_size"], "width": t["width"],
                     "heads": t["heads"], "layers": t["layers"], "mlp_ratio": t["mlp_ratio"], "no_causal_mask": True,
                     "proj_bias": True, "pool_type": "last", "act_kwargs": {"approximate": "tanh"},
                     "norm_kwargs": {"eps": t["norm_eps"]}},
    }, scale


def to_open_clip_state_dict(image_tower: VisionTower, text_tower: TextTower, logit_scale: torch.Tensor,
                            logit_bias: Optional[torch.Tensor], scale: float = 1.0) -> Dict[str, torch.Tensor]:
    shape = vision_shape(image_tower)
    image_state = {k: x.detach() for k, x in image_tower.state_dict().items()}
    trunk = openclip_timm.scale_residual_streams(vision_to_timm(image_state, shape["layers"], shape["width"]),
                                                 shape["layers"], scale)
    out = {f"visual.trunk.{k}": x for k, x in trunk.items()}
    out.update(openclip_timm.unscale_projection(shape["width"], scale))
    out.update({f"text.{k}": x.clone() for k, x in dense_text_state(text_tower).items()})
    out["logit_scale"] = logit_scale.detach().reshape(()).clone()
    out["logit_bias"] = (logit_bias.detach() if logit_bias is not None else torch.zeros(())).reshape(()).clone()
    return {k: x.contiguous().float() for k, x in out.items()}


def export_open_clip(image_tower: VisionTower, text_tower: TextTower, logit_scale: torch.Tensor,
                     logit_bias: Optional[torch.Tensor], out_dir) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` (open_clip's ``local-dir:`` layout)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config, scale = open_clip_config(image_tower, text_tower, out_dir)
    (out_dir / CONFIG).write_text(json.dumps({"model_cfg": config}, indent=2))
    state = to_open_clip_state_dict(image_tower, text_tower, logit_scale, logit_bias, scale)
    save_file(state, str(out_dir / WEIGHTS))
    return out_dir


def create_open_clip(model_name: str, checkpoint_path: Optional[str] = None) -> nn.Module:
    """``open_clip.create_model`` offline, registering our timm names first; weights from a file path
    (default for a ``local-dir:`` folder: its ``open_clip_model.safetensors``)."""
    import open_clip

    config = open_clip.get_model_config(model_name)
    if config is None:
        raise UserInputError(f"unknown open_clip model {model_name!r}: not a built-in name, a registered config "
                             "(open_clip.add_model_config) or a 'local-dir:' folder")
    timm_model = (config.get("vision_cfg") or {}).get("timm_model_name")
    if timm_model and _NAME.match(timm_model):
        register_timm_vit(timm_model)
    overrides = {}
    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:"):]).expanduser()
        bundled = folder / WEIGHTS
        if checkpoint_path is None:
            checkpoint_path = str(bundled) if bundled.is_file() else None
        overrides = openclip_timm.relocated_trunk(config["vision_cfg"], folder)
    if checkpoint_path is not None and not Path(checkpoint_path).expanduser().is_file():
        raise UserInputError(f"open_clip checkpoint not found: {checkpoint_path}")
    model = open_clip.create_model(model_name, load_weights=False, **overrides)
    if checkpoint_path is not None:
        open_clip.load_checkpoint(model, checkpoint_path, strict=True)
    return model.eval()


def _warn_if_exact_gelu(act: nn.Module, tower: str) -> None:
    """Our towers use tanh-GELU (as big_vision and transformers' SigLIP); open_clip's timm SigLIP
    configs use exact GELU, so their outputs differ slightly (~1e-3) after conversion."""
    if getattr(act, "approximate", None) != "tanh" and type(act).__name__ != "GELUTanh":
        warnings.warn(f"the open_clip {tower} tower uses {type(act).__name__} "
                      f"(approximate={getattr(act, 'approximate', None)!r}); the converted tower uses tanh-GELU, "
                      "so embeddings will differ slightly from open_clip's")


def vision_from_open_clip(model: nn.Module) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """(VisionTower kwargs, state dict) of an open_clip model whose image tower is a timm MAP ViT."""
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    if trunk is None or getattr(trunk, "attn_pool", None) is None or getattr(trunk, "cls_token", None) is not None:
        raise UserInputError("only open_clip models with a timm ViT image tower using MAP pooling and no class token "
                             "(SigLIP's layout) can initialise a VisionTower")
    block = trunk.blocks[0]
    _warn_if_exact_gelu(block.mlp.act, "image")
    scale = openclip_timm.projection_scale(getattr(model.visual, "head", None), trunk.embed_dim)
    kwargs = dict(image_size=trunk.patch_embed.img_size[0], patch_size=trunk.patch_embed.patch_size[0],
                  width=trunk.embed_dim, layers=len(trunk.blocks), heads=block.attn.num_heads,
                  mlp_ratio=block.mlp.fc1.out_features / trunk.embed_dim, pool_type="map",
                  norm_eps=trunk.norm.eps / scale**2)
    state = {k: v.detach() for k, v in trunk.state_dict().items()}
    state = openclip_timm.scale_residual_streams(state, len(trunk.blocks), 1.0 / scale)
    return kwargs, vision_from_timm(state, len(trunk.blocks))


def text_from_open_clip(model: nn.Module) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """(TextTower kwargs, state dict) of an open_clip model whose text tower is a bidirectional TextTransformer."""
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if not isinstance(text, TextTransformer) or text.attn_mask is not None or text.pool_type != "last" \
            or not isinstance(text.text_projection, nn.Linear) or text.cls_emb is not None:
        raise UserInputError("only open_clip text towers that are bidirectional TextTransformers pooling the last "
                             "token with a biased linear projection (SigLIP's layout) can initialise a TextTower")
    block = text.transformer.resblocks[0]
    _warn_if_exact_gelu(block.mlp.gelu, "text")
    kwargs = dict(vocab_size=text.vocab_size, context_length=text.context_length, width=text.width,
                  layers=len(text.transformer.resblocks), heads=block.attn.num_heads,
                  mlp_ratio=block.mlp.c_fc.out_features / text.width, output_dim=text.output_dim,
                  norm_eps=text.ln_final.eps)
    return kwargs, {k: v.detach() for k, v in text.state_dict().items()}
