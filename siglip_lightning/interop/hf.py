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
from typing import Dict, Optional, Tuple

import torch
from safetensors.torch import save_file

from siglip_lightning.errors import UserInputError
from siglip_lightning.interop.hf_layout import (
    VISION, block_kwargs, logits_from_state, model_to_hf, read_folder, text_config_dict, text_from_folder,
    tower_from_hf, vision_config, vision_config_dict,
)
from siglip_lightning.interop.keys import text_shape, vision_shape
from siglip_lightning.towers import TextTower, VisionTower

WEIGHTS = "model.safetensors"


def hf_config(image_tower: VisionTower, text_tower: TextTower, eos_id: int = 1) -> Dict:
    """A ``SiglipConfig`` dict describing the two towers."""
    v, t = vision_shape(image_tower), text_shape(text_tower)
    if t["output_dim"] != v["width"]:
        raise UserInputError(f"text output_dim {t['output_dim']} must equal the image tower width {v['width']}")
    return {
        "model_type": "siglip",
        "architectures": ["SiglipModel"],
        "text_config": text_config_dict(t, pad_id=eos_id, eos_id=eos_id),
        "vision_config": dict(vision_config_dict(v), image_size=v["image_size"]),
    }


def to_hf_state_dict(image_tower: VisionTower, text_tower: TextTower, logit_scale: torch.Tensor,
                     logit_bias: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """HF ``SiglipModel`` state dict; ``logit_scale`` is t' (log of the temperature)."""
    return model_to_hf(image_tower, text_tower, logit_scale, logit_bias, image_tower.pos_embed[0])


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
    return read_folder(folder, model_type)


def vision_from_hf(folder) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """(VisionTower kwargs, VisionTower state dict) from a local ``SiglipModel`` folder."""
    config, state = read_hf_folder(folder)
    c = vision_config(config, image_size=224)
    kwargs = dict(image_size=c["image_size"], patch_size=c["patch_size"], pool_type="map", **block_kwargs(c))
    ours = tower_from_hf(state, c["num_hidden_layers"], VISION)
    ours["pos_embed"] = state[VISION + "embeddings.position_embedding.weight"][None]
    return kwargs, ours


def text_from_hf(folder) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """(TextTower kwargs, TextTower state dict) from a local ``SiglipModel`` folder."""
    return text_from_folder(*read_hf_folder(folder))


def logits_from_hf(folder) -> Tuple[float, float]:
    """(t', b) stored in the folder."""
    return logits_from_state(read_hf_folder(folder)[1])
