"""Export a trained SigLIPModule to a Hugging Face ``SiglipModel`` folder or an open_clip model.

    siglip-lightning export --ckpt_path runs/x/checkpoints/last.ckpt --format hf --out exported/hf
    siglip-lightning export --ckpt_path runs/x/checkpoints/last.ckpt --format open_clip --out exported/oc

``hf``: ``config.json`` + ``model.safetensors`` (+ tokenizer files: ``spiece.model``, our exact
SentencePiece model, and a ``SiglipTokenizer`` over it), loadable with
``transformers.SiglipModel.from_pretrained(out)``. ``open_clip``: ``open_clip_config.json`` +
``open_clip_model.safetensors``, loadable with ``open_clip.create_model("local-dir:" + out)`` after
``siglip_lightning.interop.openclip.register_timm_vit`` (or ``create_open_clip``, which does it).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import List, Optional

from siglip_lightning.errors import UserInputError
from siglip_lightning.interop import hf, openclip
from siglip_lightning.locked import unwrap
from siglip_lightning.module import SigLIPModule

FORMATS = ("hf", "open_clip")


def export_module(module: SigLIPModule, fmt: str, out_dir, tokenizer_model: Optional[str] = None) -> Path:
    """Write ``module`` in format ``fmt`` (``hf`` or ``open_clip``) to ``out_dir``."""
    towers = (unwrap(module.image_tower), unwrap(module.text_tower), module.logit_scale, module.logit_bias)
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

        path = ImageTextDataModule(**params)._tokenizer_file()
    except Exception:  # an unreadable datamodule record only means no tokenizer to copy
        return None
    return str(path) if path.is_file() else None


def load_checkpoint(ckpt_path: str) -> tuple:
    """(module in eval mode, raw checkpoint dict)."""
    import torch

    if not Path(ckpt_path).is_file():
        raise UserInputError(f"checkpoint not found: {ckpt_path} (--ckpt_path)")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    module = SigLIPModule.load_from_checkpoint(ckpt_path, map_location="cpu")
    return module.eval(), checkpoint


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(prog="siglip-lightning export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="Lightning checkpoint of a SigLIPModule")
    parser.add_argument("--format", required=True, choices=FORMATS, help="hf (transformers SiglipModel) or open_clip")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tokenizer", default=None,
                        help="SentencePiece .model to ship (default: the one recorded by the run's datamodule)")
    args = parser.parse_args(argv)
    module, checkpoint = load_checkpoint(args.ckpt_path)
    tokenizer = args.tokenizer or tokenizer_from_checkpoint(checkpoint)
    if tokenizer is None:
        warnings.warn("no tokenizer found in the checkpoint's datamodule settings: exporting weights only")
    elif not Path(tokenizer).is_file():
        raise UserInputError(f"tokenizer model file not found: {tokenizer} (--tokenizer)")
    out = export_module(module, args.format, args.out, tokenizer)
    print(f"exported {args.format} model to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
