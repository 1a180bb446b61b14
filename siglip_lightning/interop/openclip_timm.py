"""The timm image trunk of an open_clip export, built by plain timm + open_clip (no registration).

open_clip builds a timm tower from ``vision_cfg.timm_model_name`` alone (it passes timm no shape
arguments), so a tower is named either

- by timm's own SigLIP name (``vit_so400m_patch16_siglip_384``) when that model is exactly ours:
  same shape, tanh-GELU, MAP head; or
- ``local-dir:<folder>/timm_trunk``: timm reads ``config.json`` there, whose ``model_args``
  (embed_dim, depth, num_heads, img_size, patch_size, mlp_ratio, act_layer='gelu_tanh', MAP pool)
  override those of a SigLIP architecture. timm resolves that path, so it is absolute: a moved
  folder needs ``vision_cfg.timm_model_name`` rewritten (docs/EXPORT.md).

LayerNorm eps: timm's JSON-built ViT always uses eps 1e-6. A LayerNorm with eps ``e`` on ``x`` is a
LayerNorm with eps 1e-6 on ``s * x``, ``s = sqrt(1e-6 / e)``: so the export scales the residual
streams (trunk and MAP head) by ``s`` and open_clip's linear projection (``timm_proj='linear'``)
multiplies the pooled feature by ``1 / s``. Same function, within float rounding.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from siglip_lightning.errors import UserInputError

TIMM_EPS = 1e-6  # timm's LayerNorm default, the only eps a JSON config can give
TRUNK_DIR = "timm_trunk"
_RELEASED = re.compile(r"^vit_\w+_patch(\d+)_siglip_(\d+)$")


def hidden_size(shape: Dict) -> int:
    return round(shape["width"] * shape["mlp_ratio"])  # mlp_ratio is out_features / width (keys.vision_shape)


def model_args(shape: Dict) -> Dict:
    """timm VisionTransformer arguments of our VisionTower ``shape`` (interop/keys.vision_shape)."""
    # timm's MLP width is int(embed_dim * mlp_ratio): half a unit up keeps float rounding from flooring below
    ratio = (hidden_size(shape) + 0.5) / shape["width"]
    return dict(img_size=shape["image_size"], patch_size=shape["patch_size"], embed_dim=shape["width"],
                depth=shape["layers"], num_heads=shape["heads"], mlp_ratio=ratio, class_token=False,
                global_pool="map", act_layer="gelu_tanh", num_classes=0)


def released_name(shape: Dict) -> Optional[str]:
    """timm's own SigLIP model that is exactly this tower (eps 1e-6, tanh-GELU), if any."""
    import timm
    from timm.layers import get_act_layer

    if shape["norm_eps"] != TIMM_EPS:
        return None
    for name in timm.list_models("vit_*_siglip_*"):
        match = _RELEASED.match(name)
        if match is None or (int(match[1]), int(match[2])) != (shape["patch_size"], shape["image_size"]):
            continue
        with torch.device("meta"):
            trunk = timm.create_model(name, pretrained=False, num_classes=0)
        block = trunk.blocks[0]
        if (trunk.embed_dim, len(trunk.blocks), block.attn.num_heads, block.mlp.fc1.out_features) == \
                (shape["width"], shape["layers"], shape["heads"], hidden_size(shape)) \
                and trunk.attn_pool is not None and trunk.cls_token is None and trunk.reg_token is None \
                and isinstance(block.mlp.act, get_act_layer("gelu_tanh")) and trunk.norm.eps == TIMM_EPS:
            return name
    return None


def eps_scale(norm_eps: float) -> float:
    """``s`` with LayerNorm_1e-6(s x) == LayerNorm_eps(x)."""
    if not norm_eps > 0:
        raise UserInputError(f"open_clip export needs a positive LayerNorm eps, got {norm_eps}")
    return math.sqrt(TIMM_EPS / norm_eps)


def vision_cfg(shape: Dict, out_dir: Path) -> Tuple[Dict, float]:
    """(open_clip ``vision_cfg``, eps scale) for the tower; writes ``timm_trunk/config.json`` when needed."""
    scale = eps_scale(shape["norm_eps"])
    name = released_name(shape)
    if name is None:
        trunk_dir = (out_dir / TRUNK_DIR).resolve()
        trunk_dir.mkdir(parents=True, exist_ok=True)
        size = shape["image_size"]
        config = {"architecture": "vit_base_patch16_siglip_224", "model_args": model_args(shape),
                  "pretrained_cfg": {"input_size": [3, size, size], "fixed_input_size": True,
                                     "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 0}}
        (trunk_dir / "config.json").write_text(json.dumps(config, indent=2))
        name = f"local-dir:{trunk_dir}"
    cfg = {"image_size": shape["image_size"], "timm_model_name": name, "timm_model_pretrained": False,
           "timm_pool": "map", "timm_proj": "none" if scale == 1.0 else "linear", "timm_proj_bias": False}
    return cfg, scale


def scale_residual_streams(trunk: Dict[str, torch.Tensor], layers: int, scale: float) -> Dict[str, torch.Tensor]:
    """timm trunk weights whose residual streams are ``scale`` times ours (see the module docstring)."""
    if scale == 1.0:
        return trunk
    writers = ["patch_embed.proj", "attn_pool.proj", "attn_pool.mlp.fc2"]
    writers += [f"blocks.{i}.{name}" for i in range(layers) for name in ("attn.proj", "mlp.fc2")]
    out = dict(trunk)
    out["pos_embed"] = trunk["pos_embed"] * scale
    for name in writers:
        for kind in ("weight", "bias"):
            out[f"{name}.{kind}"] = trunk[f"{name}.{kind}"] * scale
    return out


def unscale_projection(width: int, scale: float) -> Dict[str, torch.Tensor]:
    """open_clip's ``visual.head.proj``: 1 / scale on the pooled feature (none when scale is 1)."""
    return {} if scale == 1.0 else {"visual.head.proj.weight": torch.eye(width) / scale}


def projection_scale(head, width: int) -> float:
    """``s`` of an exported trunk read back: 1 without a projection, else the inverse of its
    ``eye / s`` weight. Any other projection has no place in a VisionTower."""
    proj = getattr(head, "proj", None) if head is not None else None
    extra = [name for name, _ in head.named_children() if name not in ("proj", "drop")] if head is not None else []
    if proj is None and not extra:
        return 1.0
    weight = getattr(proj, "weight", None)
    scaled_identity = weight is not None and weight.shape == (width, width) \
        and torch.equal(weight, torch.eye(width) * weight[0, 0])
    if extra or not scaled_identity or proj.bias is not None:
        raise UserInputError("only open_clip image towers without a projection after the timm trunk (or the "
                             "eps-rescaling one a siglip-lightning export writes) can initialise a VisionTower")
    return 1.0 / float(weight[0, 0])


def relocated_trunk(vision: Dict, folder: Path) -> Dict:
    """``create_model`` overrides for an export that was moved: its own ``timm_trunk`` (plain open_clip
    users pass the same ``vision_cfg=`` override); ``{}`` when nothing needs changing."""
    name = vision.get("timm_model_name") or ""
    here = folder / TRUNK_DIR
    if not name.startswith("local-dir:") or (Path(name[len("local-dir:"):]) / "config.json").is_file() \
            or not (here / "config.json").is_file():
        return {}
    return {"vision_cfg": {**vision, "timm_model_name": f"local-dir:{here.resolve()}"}}
