"""To and from Hugging Face ``transformers.SiglipModel`` folders (config.json + model.safetensors).

Our towers were laid out after ``SiglipModel``, so the conversion is a renaming, plus splitting
open_clip's packed q/k/v projection into HF's ``q_proj``/``k_proj``/``v_proj``. HF's ``logit_scale``
holds t' (it is exponentiated in the forward), like ours; ``layer_norm_eps`` is written from the
towers (torch's 1e-5 unless set), since HF's default is 1e-6.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from safetensors.torch import load_file, save_file

from siglip_lightning.errors import UserInputError
from siglip_lightning.interop.keys import HF_BLOCK, dense_text_state, linear_pairs, split_qkv, text_shape, vision_shape
from siglip_lightning.towers import TextTower, VisionTower

WEIGHTS = "model.safetensors"


def _pairs(prefix_ours: str, prefix_hf: str, layers: int, vision: bool) -> List[Tuple[str, str]]:
    """(our key, HF key) for every tensor that only needs renaming."""
    pairs: List[Tuple[str, str]] = []
    for i in range(layers):
        for ours, hf in HF_BLOCK:
            pairs += linear_pairs(f"{prefix_ours}transformer.resblocks.{i}.{ours}", f"{prefix_hf}encoder.layers.{i}.{hf}")
    if vision:
        pairs += linear_pairs(f"{prefix_ours}patch_embed", f"{prefix_hf}embeddings.patch_embedding")
        pairs += linear_pairs(f"{prefix_ours}norm", f"{prefix_hf}post_layernorm")
        pairs += [(f"{prefix_ours}head.probe", f"{prefix_hf}head.probe")]
        for ours, hf in [("head.attention.out_proj", "head.attention.out_proj"), ("head.norm", "head.layernorm"),
                         ("head.mlp.0", "head.mlp.fc1"), ("head.mlp.2", "head.mlp.fc2")]:
            pairs += linear_pairs(prefix_ours + ours, prefix_hf + hf)
        pairs += [(f"{prefix_ours}head.attention.in_proj_{p}", f"{prefix_hf}head.attention.in_proj_{p}")
                  for p in ("weight", "bias")]
    else:
        pairs += [(f"{prefix_ours}token_embedding.weight", f"{prefix_hf}embeddings.token_embedding.weight"),
                  (f"{prefix_ours}positional_embedding", f"{prefix_hf}embeddings.position_embedding.weight")]
        pairs += linear_pairs(f"{prefix_ours}ln_final", f"{prefix_hf}final_layer_norm")
        pairs += linear_pairs(f"{prefix_ours}text_projection", f"{prefix_hf}head")
    return pairs


def _tower_to_hf(state: Dict[str, torch.Tensor], layers: int, prefix: str, vision: bool) -> Dict[str, torch.Tensor]:
    out = {hf: state[ours].clone() for ours, hf in _pairs("", prefix, layers, vision)}
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.attn.in_proj_", f"{prefix}encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            for name, part in zip("qkv", split_qkv(state[src + kind])):
                out[f"{dst}{name}_proj.{kind}"] = part
    if vision:
        out[f"{prefix}embeddings.position_embedding.weight"] = state["pos_embed"][0].clone()
    return out


def _tower_from_hf(hf: Dict[str, torch.Tensor], layers: int, prefix: str, vision: bool) -> Dict[str, torch.Tensor]:
    out = {ours: hf[key] for ours, key in _pairs("", prefix, layers, vision)}
    for i in range(layers):
        src = f"{prefix}encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
                [hf[f"{src}{n}_proj.{kind}"] for n in "qkv"], dim=0)
    if vision:
        out["pos_embed"] = hf[f"{prefix}embeddings.position_embedding.weight"][None]
    return out


def hf_config(image_tower: VisionTower, text_tower: TextTower, eos_id: int = 1) -> Dict:
    """A ``SiglipConfig`` dict describing the two towers."""
    v, t = vision_shape(image_tower), text_shape(text_tower)
    if t["output_dim"] != v["width"]:
        raise UserInputError(f"text output_dim {t['output_dim']} must equal the image tower width {v['width']}")
    return {
        "model_type": "siglip",
        "architectures": ["SiglipModel"],
        "text_config": {
            "vocab_size": t["vocab_size"], "hidden_size": t["width"],
            "intermediate_size": round(t["width"] * t["mlp_ratio"]), "num_hidden_layers": t["layers"],
            "num_attention_heads": t["heads"], "max_position_embeddings": t["context_length"],
            "projection_size": t["output_dim"], "layer_norm_eps": t["norm_eps"], "hidden_act": "gelu_pytorch_tanh",
            "pad_token_id": eos_id, "eos_token_id": eos_id, "bos_token_id": None,
        },
        "vision_config": {
            "hidden_size": v["width"], "intermediate_size": round(v["width"] * v["mlp_ratio"]),
            "num_hidden_layers": v["layers"], "num_attention_heads": v["heads"], "num_channels": 3,
            "image_size": v["image_size"], "patch_size": v["patch_size"], "layer_norm_eps": v["norm_eps"],
            "hidden_act": "gelu_pytorch_tanh", "vision_use_head": True,
        },
    }


def to_hf_state_dict(image_tower: VisionTower, text_tower: TextTower, logit_scale: torch.Tensor,
                     logit_bias: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """HF ``SiglipModel`` state dict; ``logit_scale`` is t' (log of the temperature)."""
    v_layers = len(image_tower.transformer.resblocks)
    t_layers = len(text_tower.transformer.resblocks)
    image_state = {k: x.detach() for k, x in image_tower.state_dict().items()}
    out = _tower_to_hf(image_state, v_layers, "vision_model.", vision=True)
    out.update(_tower_to_hf(dense_text_state(text_tower), t_layers, "text_model.", vision=False))
    out["logit_scale"] = logit_scale.detach().reshape(1).clone()
    bias = logit_bias.detach() if logit_bias is not None else torch.zeros(())
    out["logit_bias"] = bias.reshape(1).clone()
    return {k: v.contiguous().float() for k, v in out.items()}


def save_hf_processor(sentencepiece_model: Optional[Path], out_dir: Path, context_length: int,
                      image_settings: Optional[Dict] = None) -> None:
    """Write the run's processor: the raw ``spiece.model``, a ``SiglipTokenizer`` over it that gives the
    training ids, and (with ``image_settings``, see ``interop/hf_processor.py``) the image processor."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if sentencepiece_model is not None:
        shutil.copyfile(sentencepiece_model, out_dir / "spiece.model")
    try:
        import transformers  # noqa: F401
    except ImportError:
        warnings.warn("transformers is not installed: wrote spiece.model only, no processor files "
                      "(pip install 'siglip-lightning[interop]')")
        return
    from siglip_lightning.interop.hf_processor import save_siglip_processor, siglip_tokenizer

    if sentencepiece_model is None:
        if image_settings is not None:
            from transformers import SiglipImageProcessor

            settings = {k: v for k, v in image_settings.items() if not k.startswith("_")}
            SiglipImageProcessor(**settings).save_pretrained(str(out_dir))
        return
    tokenizer = siglip_tokenizer(out_dir / "spiece.model", context_length)
    if image_settings is None:
        tokenizer.save_pretrained(str(out_dir))
    else:
        save_siglip_processor(out_dir, tokenizer, image_settings)


def export_hf(image_tower: VisionTower, text_tower: TextTower, logit_scale: torch.Tensor,
              logit_bias: Optional[torch.Tensor], out_dir, tokenizer_model: Optional[str] = None,
              image_settings: Optional[Dict] = None) -> Path:
    """Write a folder that ``transformers.SiglipModel.from_pretrained`` loads offline; with the run's
    ``tokenizer_model`` and ``image_settings``, ``AutoProcessor`` and the zero-shot pipeline too."""
    from siglip_lightning.interop.hf_processor import warn_if_pipeline_cannot_run

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = hf_config(image_tower, text_tower)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    save_file(to_hf_state_dict(image_tower, text_tower, logit_scale, logit_bias), str(out_dir / WEIGHTS),
              metadata={"format": "pt"})
    warn_if_pipeline_cannot_run(text_tower.context_length)
    if tokenizer_model is not None or image_settings is not None:
        save_hf_processor(Path(tokenizer_model) if tokenizer_model else None, out_dir, text_tower.context_length,
                          image_settings)
    return out_dir


def read_hf_folder(folder, model_type: str = "siglip") -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """(config dict, state dict) of a local Hugging Face folder of ``model_type`` (``SiglipModel``: siglip)."""
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
    state: Dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return config, state


def _text_defaults(config: Dict) -> Dict:
    """HF's own defaults for keys a config may leave out."""
    text = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "max_position_embeddings": 64, "layer_norm_eps": 1e-6}
    text.update(config.get("text_config") or {})
    text.setdefault("projection_size", text["hidden_size"])
    return text


def _vision_defaults(config: Dict) -> Dict:
    vision = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6}
    vision.update(config.get("vision_config") or {})
    return vision


def vision_from_hf(folder) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """(VisionTower kwargs, VisionTower state dict) from a local ``SiglipModel`` folder."""
    config, state = read_hf_folder(folder)
    c = _vision_defaults(config)
    kwargs = dict(image_size=c["image_size"], patch_size=c["patch_size"], width=c["hidden_size"],
                  layers=c["num_hidden_layers"], heads=c["num_attention_heads"],
                  mlp_ratio=c["intermediate_size"] / c["hidden_size"], pool_type="map", norm_eps=c["layer_norm_eps"])
    return kwargs, _tower_from_hf(state, c["num_hidden_layers"], "vision_model.", vision=True)


def text_from_hf(folder) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """(TextTower kwargs, TextTower state dict) from a local ``SiglipModel`` folder."""
    config, state = read_hf_folder(folder)
    c = _text_defaults(config)
    kwargs = dict(vocab_size=c["vocab_size"], context_length=c["max_position_embeddings"], width=c["hidden_size"],
                  layers=c["num_hidden_layers"], heads=c["num_attention_heads"],
                  mlp_ratio=c["intermediate_size"] / c["hidden_size"], output_dim=c["projection_size"],
                  norm_eps=c["layer_norm_eps"])
    return kwargs, _tower_from_hf(state, c["num_hidden_layers"], "text_model.", vision=False)


def logits_from_hf(folder) -> Tuple[float, float]:
    """(t', b) stored in the folder."""
    _, state = read_hf_folder(folder)
    return float(state["logit_scale"].reshape(())), float(state["logit_bias"].reshape(()))
