"""Export a trained SigLIPModule to a Hugging Face ``SiglipModel`` folder or an open_clip model
(the command is ``siglip-lightning export``, ``commands/export.py``).

``hf``: ``config.json`` + ``model.safetensors`` (+ tokenizer files: ``spiece.model``, our exact
SentencePiece model, and a ``SiglipTokenizer`` over it), loadable with
``transformers.SiglipModel.from_pretrained(out)``; a NaFlex image tower gives a ``Siglip2Model``
folder instead (``interop/hf_siglip2.py``), with its image processor at the run's evaluation budget. ``open_clip``: ``open_clip_config.json`` +
``open_clip_model.safetensors``, loadable with ``open_clip.create_model("local-dir:" + out)`` after
``siglip_lightning.interop.openclip.register_timm_vit`` (or ``create_open_clip``, which does it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from siglip_lightning.errors import UserInputError
from siglip_lightning.interop import hf, openclip
from siglip_lightning.interop.hf_siglip2 import export_siglip2
from siglip_lightning.towers.naflex import NaFlexVisionTower
from siglip_lightning.towers.locked import unwrap
from siglip_lightning.model.module import SigLIPModule

FORMATS = ("hf", "open_clip")


def export_module(module: SigLIPModule, fmt: str, out_dir, tokenizer_model: Optional[str] = None,
                  image_settings: Optional[dict] = None) -> Path:
    """Write ``module`` in format ``fmt`` (``hf`` or ``open_clip``) to ``out_dir``.

    ``image_settings``: for a NaFlex model, ``export_siglip2``'s ``max_num_patches`` / ``image_mean`` /
    ``image_std`` (see :func:`~siglip_lightning.interop.hf_siglip2.image_settings_from_checkpoint`).
    """
    towers = (unwrap(module.image_tower), unwrap(module.text_tower), module.logit_scale, module.logit_bias)
    if fmt == "hf" and isinstance(towers[0], NaFlexVisionTower):
        return export_siglip2(*towers, out_dir, tokenizer_model=tokenizer_model, **(image_settings or {}))
    if fmt == "hf":
        return hf.export_hf(*towers, out_dir, tokenizer_model=tokenizer_model)
    if fmt == "open_clip":
        out = openclip.export_open_clip(*towers, out_dir)
        if tokenizer_model is not None:
            (Path(out) / "spiece.model").write_bytes(Path(tokenizer_model).read_bytes())
        return out
    raise UserInputError(f"--format must be one of {FORMATS}, got {fmt!r}")


def tokenizer_from_checkpoint(checkpoint: dict) -> Optional[str]:
    """The SentencePiece file the run trained with, when the checkpoint's datamodule can tell."""
    params = {k: v for k, v in (checkpoint.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
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
