"""What Hugging Face's ``SiglipModel`` and ``Siglip2Model`` folders share: key maps, config defaults,
the text tower, t' and b, and reading the folder.

``Siglip2Model`` is ``SiglipModel`` with a NaFlex patch embedding and position table: the blocks, the
MAP head and the whole text tower carry the same names, so ``hf.py`` and ``hf_siglip2.py`` keep only
how the position embeddings and the vision config differ. Our blocks are open_clip's (packed q/k/v);
HF splits the projection into ``q_proj`` / ``k_proj`` / ``v_proj``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from siglip_lightning.errors import UserInputError
from siglip_lightning.interop.keys import HF_BLOCK, dense_text_state, linear_pairs, split_qkv
from siglip_lightning.interop.read_once import read_once, stamp
from siglip_lightning.towers import TextTower

VISION, TEXT = "vision_model.", "text_model."
# transformers' own defaults for keys a config.json may leave out (the same for both model types)
TEXT_DEFAULTS = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "max_position_embeddings": 64, "layer_norm_eps": 1e-6}
VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "patch_size": 16, "layer_norm_eps": 1e-6}


def tower_pairs(prefix: str, layers: int) -> List[Tuple[str, str]]:
    """(our key, HF key) of every tensor that only needs renaming (position embeddings of images aside)."""
    pairs: List[Tuple[str, str]] = []
    for i in range(layers):
        for ours, hf in HF_BLOCK:
            pairs += linear_pairs(f"transformer.resblocks.{i}.{ours}", f"{prefix}encoder.layers.{i}.{hf}")
    if prefix == VISION:
        pairs += linear_pairs("patch_embed", prefix + "embeddings.patch_embedding")
        pairs += linear_pairs("norm", prefix + "post_layernorm")
        pairs += [("head.probe", prefix + "head.probe")]
        pairs += [(f"head.attention.in_proj_{p}", f"{prefix}head.attention.in_proj_{p}") for p in ("weight", "bias")]
        for ours, hf in [("head.attention.out_proj", "head.attention.out_proj"), ("head.norm", "head.layernorm"),
                         ("head.mlp.0", "head.mlp.fc1"), ("head.mlp.2", "head.mlp.fc2")]:
            pairs += linear_pairs(ours, prefix + hf)
    else:
        pairs += [("token_embedding.weight", prefix + "embeddings.token_embedding.weight"),
                  ("positional_embedding", prefix + "embeddings.position_embedding.weight")]
        pairs += linear_pairs("ln_final", prefix + "final_layer_norm")
        pairs += linear_pairs("text_projection", prefix + "head")
    return pairs


def tower_to_hf(state: Dict[str, torch.Tensor], layers: int, prefix: str) -> Dict[str, torch.Tensor]:
    """Our tower's state dict under HF names, q/k/v split."""
    out = {hf: state[ours].detach().clone() for ours, hf in tower_pairs(prefix, layers)}
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.attn.in_proj_", f"{prefix}encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            for name, part in zip("qkv", split_qkv(state[src + kind].detach())):
                out[f"{dst}{name}_proj.{kind}"] = part
    return out


def tower_from_hf(hf: Dict[str, torch.Tensor], layers: int, prefix: str) -> Dict[str, torch.Tensor]:
    """One tower's state dict under our names, q/k/v packed."""
    pairs = tower_pairs(prefix, layers)
    missing = [key for _, key in pairs if key not in hf]
    if missing:
        raise UserInputError(f"the weights lack {missing[:6]}: not a complete {prefix[:-1]}")
    out = {ours: hf[key] for ours, key in pairs}
    for i in range(layers):
        src = f"{prefix}encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
                [hf[f"{src}{n}_proj.{kind}"] for n in "qkv"], dim=0)
    return out


def model_to_hf(image_tower: nn.Module, text_tower: TextTower, logit_scale: torch.Tensor,
                logit_bias: Optional[torch.Tensor], position_table: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The model's state dict under HF names; ``position_table``: the image position embeddings as HF's
    ``[positions, width]`` table. HF's ``logit_scale`` holds t' (exponentiated in the forward), as ours."""
    out = tower_to_hf(dict(image_tower.state_dict()), len(image_tower.transformer.resblocks), VISION)
    out[VISION + "embeddings.position_embedding.weight"] = position_table.detach().clone()
    out.update(tower_to_hf(dense_text_state(text_tower), len(text_tower.transformer.resblocks), TEXT))
    bias = logit_bias.detach() if logit_bias is not None else torch.zeros(())  # no bias is written as 0
    out.update({"logit_scale": logit_scale.detach().reshape(1).clone(), "logit_bias": bias.reshape(1).clone()})
    return {k: v.contiguous().float() for k, v in out.items()}


def text_config_dict(t: Dict, pad_id: int, eos_id: int) -> Dict:
    """The ``text_config`` of a ``config.json`` for a text tower of shape ``t`` (``keys.text_shape``)."""
    return {"vocab_size": t["vocab_size"], "hidden_size": t["width"],
            "intermediate_size": round(t["width"] * t["mlp_ratio"]), "num_hidden_layers": t["layers"],
            "num_attention_heads": t["heads"], "max_position_embeddings": t["context_length"],
            "projection_size": t["output_dim"], "layer_norm_eps": t["norm_eps"], "hidden_act": "gelu_pytorch_tanh",
            "pad_token_id": pad_id, "eos_token_id": eos_id, "bos_token_id": None}


def vision_config_dict(v: Dict) -> Dict:
    """The part of a ``vision_config`` both model types share, for an image tower of shape ``v``."""
    return {"hidden_size": v["width"], "intermediate_size": round(v["width"] * v["mlp_ratio"]),
            "num_hidden_layers": v["layers"], "num_attention_heads": v["heads"], "num_channels": 3,
            "patch_size": v["patch_size"], "layer_norm_eps": v["norm_eps"], "hidden_act": "gelu_pytorch_tanh",
            "vision_use_head": True}


def text_config(config: Dict) -> Dict:
    c = dict(TEXT_DEFAULTS, **(config.get("text_config") or {}))
    if c.get("projection_size") is None:
        c["projection_size"] = c["hidden_size"]
    return c


def vision_config(config: Dict, **family_defaults) -> Dict:
    return {**VISION_DEFAULTS, **family_defaults, **(config.get("vision_config") or {})}


def block_kwargs(c: Dict) -> Dict:
    """Tower constructor arguments every HF config states the same way."""
    return dict(width=c["hidden_size"], layers=c["num_hidden_layers"], heads=c["num_attention_heads"],
                mlp_ratio=c["intermediate_size"] / c["hidden_size"], norm_eps=c["layer_norm_eps"])


def text_from_folder(config: Dict, state: Dict[str, torch.Tensor]) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """(TextTower kwargs, its state dict): the text tower is the same in both model types."""
    c = text_config(config)
    kwargs = dict(vocab_size=c["vocab_size"], context_length=c["max_position_embeddings"],
                  output_dim=c["projection_size"], **block_kwargs(c))
    return kwargs, tower_from_hf(state, c["num_hidden_layers"], TEXT)


def logits_from_state(state: Dict[str, torch.Tensor]) -> Tuple[float, float]:
    """(t', b) stored in a folder's weights."""
    return float(state["logit_scale"].reshape(())), float(state["logit_bias"].reshape(()))


def read_folder(folder, model_type: str) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """(config dict, state dict) of a local Hugging Face folder of ``model_type``; its weights are
    read once per process (``read_once.py``) however many towers and settings ask."""
    from safetensors import torch as safetensors_torch  # looked up per call: tests count the reads

    folder = Path(folder).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserInputError(f"not a Hugging Face model folder: {config_file} not found")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != model_type:
        raise UserInputError(f"{config_file} has model_type {config.get('model_type')!r}, expected {model_type!r}")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserInputError(f"no .safetensors weights in {folder}")

    def load() -> Dict[str, torch.Tensor]:
        state: Dict[str, torch.Tensor] = {}
        for file in files:
            state.update(safetensors_torch.load_file(str(file)))
        return state

    return config, read_once(("hf", stamp(files)), load)
