"""Export a trained SigLIPModule to a Hugging Face ``SiglipModel`` folder or an open_clip model
(the command is ``siglip-lightning export``, ``commands/export.py``).

``hf``: ``config.json`` + ``model.safetensors`` + the run's processor (``spiece.model``, a
``SiglipTokenizer`` giving the training ids, an image processor that is the run's eval transform:
``interop/hf_processor.py``), loadable with ``AutoModel`` / ``AutoProcessor`` / the zero-shot
pipeline; a NaFlex image tower gives a ``Siglip2Model`` folder instead (``interop/hf_siglip2.py``),
with its image processor at the run's evaluation budget. See docs/EXPORT.md. ``open_clip``: ``open_clip_config.json`` +
``open_clip_model.safetensors`` + the run's tokenizer and ``preprocess_cfg``
(``interop/openclip_processor.py``), loadable by plain open_clip:
``open_clip.create_model_and_transforms("local-dir:" + out)`` and ``open_clip.get_tokenizer`` (the
image trunk is built by timm alone: ``interop/openclip_timm.py``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

from siglip_lightning.errors import UserInputError
from siglip_lightning.interop import hf, openclip
from siglip_lightning.interop.hf_processor import image_settings as fixed_image_settings
from siglip_lightning.interop.hf_siglip2 import export_siglip2
from siglip_lightning.interop.openclip_processor import write_open_clip_processor
from siglip_lightning.interop.hf_siglip2 import image_settings_from_checkpoint as naflex_image_settings
from siglip_lightning.towers.naflex import NaFlexVisionTower
from siglip_lightning.towers.locked import unwrap
from siglip_lightning.model.module import SigLIPModule

FORMATS = ("hf", "open_clip")


def export_module(module: SigLIPModule, fmt: str, out_dir, tokenizer_model: Optional[str] = None,
                  source: Optional[str] = None, image_settings: Optional[dict] = None) -> Path:
    """Write ``module`` in format ``fmt`` (``hf`` or ``open_clip``) to ``out_dir``.

    ``source``: the checkpoint folder the run was fine-tuned from (``--pretrained``); its processor
    (tokenizer + image preprocessing) is written with the weights, so the export loads as it did.
    ``image_settings``: the run's eval transform (:func:`image_settings_from_checkpoint`): for a
    NaFlex model ``export_siglip2``'s ``max_num_patches`` / ``image_mean`` / ``image_std``, else
    ``SiglipImageProcessor`` settings (``interop/hf_processor.image_settings``).
    """
    towers = (unwrap(module.image_tower), unwrap(module.text_tower), module.logit_scale, module.logit_bias)
    if fmt == "hf":
        tokenizer = None if source else tokenizer_model
        if isinstance(towers[0], NaFlexVisionTower):
            out = export_siglip2(*towers, out_dir, tokenizer_model=tokenizer, **(image_settings or {}))
        else:
            out = hf.export_hf(*towers, out_dir, tokenizer_model=tokenizer, image_settings=image_settings)
        if source is not None:
            from transformers import AutoProcessor

            AutoProcessor.from_pretrained(source, local_files_only=True).save_pretrained(str(out))
        return out
    if fmt == "open_clip":
        out = openclip.export_open_clip(*towers, out_dir)
        if source is not None:
            carry_open_clip_preprocessing(Path(source.removeprefix("local-dir:")), Path(out))
        elif tokenizer_model is not None:
            write_open_clip_processor(Path(out), Path(tokenizer_model), image_settings)
        return out
    raise UserInputError(f"--format must be one of {FORMATS}, got {fmt!r}")


def carry_open_clip_preprocessing(source: Path, out: Path) -> None:
    """Copy the source model's tokenizer settings and ``preprocess_cfg`` into the exported config."""
    theirs = json.loads((source / openclip.CONFIG).read_text())
    ours = json.loads((out / openclip.CONFIG).read_text())
    text = theirs["model_cfg"].get("text_cfg", {})
    for key in ("hf_tokenizer_name", "tokenizer_kwargs"):
        if key in text:
            ours["model_cfg"]["text_cfg"][key] = text[key]
    if "preprocess_cfg" in theirs:
        ours["preprocess_cfg"] = theirs["preprocess_cfg"]
    (out / openclip.CONFIG).write_text(json.dumps(ours, indent=2))
    if text.get("hf_tokenizer_name"):  # open_clip's local-dir: reads the HF tokenizer files from the folder
        import open_clip

        open_clip.get_tokenizer(f"local-dir:{source}").save_pretrained(str(out))


def image_settings_from_checkpoint(module: SigLIPModule, checkpoint: dict) -> Optional[dict]:
    """The run's eval transform as the hf image processor settings of ``module``'s image tower, read
    from the checkpoint's datamodule record (``None`` when the checkpoint has none)."""
    params = checkpoint.get("datamodule_hyper_parameters")
    if not params:
        return None
    if isinstance(unwrap(module.image_tower), NaFlexVisionTower):
        return naflex_image_settings(checkpoint)
    return fixed_image_settings(params)


def pretrained_source(checkpoint: dict) -> Tuple[Optional[str], Optional[str]]:
    """(format, folder) of the released checkpoint a run was fine-tuned from (both towers are one of
    ``pretrained_folder.FAMILIES``' from one folder, so its processor applies), or (None, None)."""
    from siglip_lightning.interop.pretrained_folder import FAMILIES, released_source

    source = released_source(checkpoint.get("hyper_parameters") or {}, both_towers=True)
    if source is None:
        return None, None
    family, folder = source
    return FAMILIES[family].export_format, folder


def tokenizer_from_checkpoint(checkpoint: dict) -> Optional[str]:
    """The SentencePiece file the run trained with, when the checkpoint's datamodule can tell."""
    params = {k: v for k, v in (checkpoint.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
    if params.get("tokenizer_type") in ("hf", "open_clip"):  # a model folder, carried by export_module(source=)
        return None
    if params.get("tokenizer_path"):
        return params["tokenizer_path"]
    try:
        from siglip_lightning.data.datamodule import ImageTextDataModule

        path = ImageTextDataModule(**params).tokenizer_file()
    except Exception:  # an unreadable datamodule record only means no tokenizer to copy
        return None
    return str(path) if path.is_file() else None


def load_checkpoint(ckpt_path: str) -> tuple:
    """(module in eval mode, raw checkpoint dict)."""
    import torch

    if not Path(ckpt_path).is_file():
        raise UserInputError(f"checkpoint not found: {ckpt_path} (--ckpt_path)")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    module = SigLIPModule.load_from_checkpoint(ckpt_path, map_location="cpu")
    return module.eval(), checkpoint
