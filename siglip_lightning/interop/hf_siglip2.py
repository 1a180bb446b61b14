"""To and from Hugging Face ``transformers.Siglip2Model`` folders (SigLIP 2, NaFlex).

``Siglip2Model`` is ``SiglipModel`` with a NaFlex vision tower: a ``Linear`` patch embedding of the
flattened ``p x p x 3`` patch (ours: ``NaFlexVisionTower.patch_embed``, same layout) and a position
table of ``num_patches = g * g`` rows (ours: the ``[g, g, d]`` grid ``pos_grid``, row-major). The
blocks, the MAP head and the whole text tower are renamed exactly as for ``SiglipModel``.

A folder holds config.json, model.safetensors, and for ``AutoProcessor`` the tokenizer files and
preprocessor_config.json (patch size, patch budget, mean/std). Import returns towers, t', b and the
tokenizer / image-processor settings; export writes all of it (see docs/NAFLEX.md).
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
from siglip_lightning.interop.hf_processor import warn_if_pipeline_cannot_run
from siglip_lightning.interop.hf_layout import (
    VISION, block_kwargs, logits_from_state, model_to_hf, read_folder, text_config_dict, text_from_folder,
    tower_from_hf, vision_config, vision_config_dict,
)
from siglip_lightning.interop.keys import load_exact, norm_eps, text_shape
from siglip_lightning.towers import TextTower
from siglip_lightning.towers.naflex import NaFlexVisionTower

WEIGHTS = "model.safetensors"
MODEL_TYPE = "siglip2"
PROCESSOR = "preprocessor_config.json"


# --- config -----------------------------------------------------------------------------------------
def naflex_shape(tower: NaFlexVisionTower) -> Dict:
    if not isinstance(tower, NaFlexVisionTower):
        raise UserInputError(f"a Siglip2Model export needs a NaFlexVisionTower image tower, got {type(tower).__name__}")
    if tower.proj is not None:
        raise UserInputError(f"Siglip2Model has no image projection: this tower projects width {tower.width} to "
                             f"output_dim {tower.output_dim} (set output_dim to None)")
    block = tower.transformer.resblocks[0]
    return dict(patch_size=tower.patch_size, width=tower.width, layers=len(tower.transformer.resblocks),
                heads=block.attn.num_heads, mlp_ratio=block.mlp.c_fc.out_features / tower.width,
                position_grid=tower.grid_size, norm_eps=norm_eps(tower))


def siglip2_config(image_tower: NaFlexVisionTower, text_tower: TextTower, pad_id: int = 0, eos_id: int = 1) -> Dict:
    """A ``Siglip2Config`` dict describing the two towers."""
    v, t = naflex_shape(image_tower), text_shape(text_tower)
    if t["output_dim"] != v["width"]:
        raise UserInputError(f"text output_dim {t['output_dim']} must equal the image tower width {v['width']}")
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["Siglip2Model"],
        "text_config": text_config_dict(t, pad_id=pad_id, eos_id=eos_id),
        "vision_config": dict(vision_config_dict(v), num_patches=v["position_grid"] ** 2),
    }


# --- export -----------------------------------------------------------------------------------------
def to_siglip2_state_dict(image_tower: NaFlexVisionTower, text_tower: TextTower, logit_scale: torch.Tensor,
                          logit_bias: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """HF ``Siglip2Model`` state dict; ``logit_scale`` is t' (log of the temperature)."""
    return model_to_hf(image_tower, text_tower, logit_scale, logit_bias, image_tower.pos_grid.flatten(0, 1))


def processor_config(patch_size: int, max_num_patches: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> Dict:
    """``Siglip2ImageProcessor`` settings: the patch budget the model is evaluated at, mean/std."""
    return {"image_processor_type": "Siglip2ImageProcessor", "processor_class": "Siglip2Processor",
            "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(mean), "image_std": list(std), "resample": 2, "patch_size": patch_size,
            "max_num_patches": max_num_patches}


def export_siglip2(image_tower: NaFlexVisionTower, text_tower: TextTower, logit_scale: torch.Tensor,
                   logit_bias: Optional[torch.Tensor], out_dir, tokenizer_model: Optional[str] = None,
                   max_num_patches: int = 256, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)) -> Path:
    """Write a folder that ``transformers.AutoModel`` (and, with ``tokenizer_model``, ``AutoProcessor``) loads.

    Args:
        tokenizer_model: a SentencePiece ``.model`` trained with SigLIP 2's (Gemma's) special ids
            (``train_sentencepiece(..., ids="gemma")``); written as a ``GemmaTokenizer``.
        max_num_patches: the patch budget ``AutoProcessor`` resizes images to.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = siglip2_config(image_tower, text_tower)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    save_file(to_siglip2_state_dict(image_tower, text_tower, logit_scale, logit_bias), str(out_dir / WEIGHTS),
              metadata={"format": "pt"})
    (out_dir / PROCESSOR).write_text(json.dumps(
        processor_config(image_tower.patch_size, max_num_patches, image_mean, image_std), indent=2))
    if (image_tower.patch_size, max_num_patches, text_tower.context_length) != (16, 256, 64):
        # transformers' Siglip2Processor.__call__ puts its class defaults over the saved settings
        warnings.warn(
            f"exported patch_size {image_tower.patch_size}, max_num_patches {max_num_patches}, context length "
            f"{text_tower.context_length}: AutoImageProcessor and the tokenizer read them from the folder, but "
            "transformers' Siglip2Processor(...) applies 16 / 256 / 64 unless passed per call "
            f"(patch_size={image_tower.patch_size}, max_num_patches={max_num_patches}, "
            f"max_length={text_tower.context_length})")
    warn_if_pipeline_cannot_run(text_tower.context_length)
    if tokenizer_model is not None:
        from siglip_lightning.text.hf_gemma import save_gemma_tokenizer

        if _has_gemma_ids(tokenizer_model):
            save_gemma_tokenizer(tokenizer_model, out_dir, text_tower.context_length)
        else:
            shutil.copyfile(tokenizer_model, out_dir / "spiece.model")
            warnings.warn(f"{tokenizer_model} does not have SigLIP 2's (Gemma's) special ids (pad 0, eos 1): wrote it "
                          "as spiece.model only, so AutoProcessor has no tokenizer; train with data.tokenizer_type=gemma")
    return out_dir


def _has_gemma_ids(model_file) -> bool:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(model_file))
    return (processor.pad_id(), processor.eos_id()) == (0, 1)


def image_settings_from_checkpoint(checkpoint: Dict) -> Dict:
    """``export_siglip2``'s image settings from a run's datamodule record: its NaFlex eval budget, mean, std."""
    params = checkpoint.get("datamodule_hyper_parameters") or {}
    naflex = params.get("naflex")
    budget = getattr(naflex, "eval_budget", None) if not isinstance(naflex, dict) else naflex.get("eval_budget")
    if budget is None and naflex is not None:
        budgets = naflex.get("budgets") if isinstance(naflex, dict) else getattr(naflex, "budgets", None)
        budget = max(budgets) if budgets else None
    out = {k: tuple(params[k]) for k in ("image_mean", "image_std") if params.get(k) is not None}
    if budget is not None:
        out["max_num_patches"] = int(budget)
    return out


# --- import -----------------------------------------------------------------------------------------
def read_siglip2_folder(folder) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """(config dict, state dict) of a local ``Siglip2Model`` folder."""
    return read_folder(folder, MODEL_TYPE)


def _vision_config(config: Dict) -> Dict:
    return vision_config(config, num_patches=256, vision_use_head=True)


def naflex_from_siglip2(folder) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """(NaFlexVisionTower kwargs, its state dict) from a local ``Siglip2Model`` folder."""
    config, state = read_siglip2_folder(folder)
    c = _vision_config(config)
    if not c["vision_use_head"]:
        raise UserInputError(f"{folder}: vision_use_head is false (no MAP head): no image embedding to train")
    grid = round(c["num_patches"] ** 0.5)
    if grid * grid != c["num_patches"]:
        raise UserInputError(f"{folder}: num_patches {c['num_patches']} is not a square grid")
    kwargs = dict(patch_size=c["patch_size"], position_grid=grid, **block_kwargs(c))
    ours = tower_from_hf(state, c["num_hidden_layers"], VISION)
    table = state[VISION + "embeddings.position_embedding.weight"]
    ours["pos_grid"] = table.reshape(grid, grid, table.shape[-1])
    return kwargs, ours


def text_from_siglip2(folder) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """(TextTower kwargs, its state dict) from a local ``Siglip2Model`` folder."""
    return text_from_folder(*read_siglip2_folder(folder))


def logits_from_siglip2(folder) -> Tuple[float, float]:
    """(t', b) stored in the folder."""
    return logits_from_state(read_siglip2_folder(folder)[1])


def processor_from_siglip2(folder) -> Dict:
    """The image processor settings (``patch_size``, ``max_num_patches``, ``image_mean``, ``image_std``)."""
    path = Path(folder).expanduser() / PROCESSOR
    saved = json.loads(path.read_text()) if path.is_file() else {}
    vision = _vision_config(read_siglip2_folder(folder)[0])
    return {"patch_size": saved.get("patch_size", vision["patch_size"]),
            "max_num_patches": saved.get("max_num_patches", 256),
            "image_mean": list(saved.get("image_mean", (0.5, 0.5, 0.5))),
            "image_std": list(saved.get("image_std", (0.5, 0.5, 0.5)))}


def load_siglip2(folder) -> Dict:
    """Everything a fine-tune needs from a ``Siglip2Model`` folder, as built objects and settings.

    Returns a dict: ``image_tower`` (NaFlexVisionTower), ``text_tower`` (TextTower), ``logit_scale``
    (t'), ``logit_bias`` (b), ``processor`` (image settings, see :func:`processor_from_siglip2`),
    ``tokenizer`` (see :func:`~siglip_lightning.text.hf_gemma.tokenizer_settings`).
    """
    from siglip_lightning.text.hf_gemma import tokenizer_settings

    v_kwargs, v_state = naflex_from_siglip2(folder)
    t_kwargs, t_state = text_from_siglip2(folder)
    image_tower, text_tower = NaFlexVisionTower(**v_kwargs), TextTower(**t_kwargs)
    load_exact(image_tower, v_state, str(folder))
    load_exact(text_tower, t_state, str(folder))
    scale, bias = logits_from_siglip2(folder)
    return {"image_tower": image_tower, "text_tower": text_tower, "logit_scale": scale, "logit_bias": bias,
            "processor": processor_from_siglip2(folder), "tokenizer": tokenizer_settings(folder, t_kwargs)}


def finetune_settings(folder) -> Dict:
    """The config settings (dotted keys) that fine-tune a ``Siglip2Model`` folder here as it was trained.

    For the fine-tuning command's ``--pretrained`` dispatch on ``model_type: siglip2``: both towers
    from the folder, t' and b, the NaFlex data path at the folder's patch size and budget, its mean /
    std, and SigLIP 2's text conventions over the folder's SentencePiece model (when it ships one;
    else ``data.tokenizer_path`` must be given).
    """
    from siglip_lightning.interop.pretrained_folder import FAMILIES

    folder = str(Path(folder).expanduser())
    scale, bias = logits_from_siglip2(folder)
    image = processor_from_siglip2(folder)
    text_kwargs, _ = text_from_siglip2(folder)
    settings = {
        **FAMILIES[MODEL_TYPE].towers(path=folder),
        "model.init_logit_scale": scale, "model.init_logit_bias": bias,
        "data.naflex": {"patch_size": image["patch_size"], "budgets": [image["max_num_patches"]],
                        "eval_budget": image["max_num_patches"]},
        "data.image_mean": image["image_mean"], "data.image_std": image["image_std"],
        "data.context_length": text_kwargs["context_length"],
    }
    settings.update(_folder_tokenizer(Path(folder)))
    return settings


def _folder_tokenizer(folder: Path) -> Dict:
    """The folder's own tokenizer: its SentencePiece ``tokenizer.model`` under SigLIP 2's conventions, else
    ``tokenizer.json`` / ``spiece.model`` through ``AutoTokenizer`` (what ``save_pretrained`` writes in
    transformers 5); never a tokenizer trained anew, which could not match the pretrained text tower."""
    if (folder / "tokenizer.model").is_file():
        return {"data.tokenizer_type": "gemma", "data.tokenizer_path": str(folder / "tokenizer.model")}
    from siglip_lightning.text.pretrained import require_tokenizer_files

    require_tokenizer_files(folder, ("tokenizer.model", "tokenizer.json", "spiece.model"))
    return {"data.tokenizer_type": "hf", "data.tokenizer_path": str(folder)}
