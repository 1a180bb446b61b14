"""``siglip-lightning export``: a trained checkpoint as a Hugging Face or open_clip model folder.

    siglip-lightning export --ckpt_path runs/x/checkpoints/last.ckpt --format hf --out exported/hf
    siglip-lightning export --ckpt_path runs/x/checkpoints/last.ckpt --format open_clip --out exported/oc
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Literal, Optional

from jsonargparse import CLI

from siglip_lightning.errors import UserInputError
from siglip_lightning.interop.export import (
    export_module, image_settings_from_checkpoint, load_checkpoint, pretrained_source, tokenizer_from_checkpoint,
)


def export(ckpt_path: str, out: str, format: Optional[Literal["hf", "open_clip"]] = None,
           tokenizer: Optional[str] = None) -> None:
    """Export a SigLIPModule checkpoint to a Hugging Face ``SiglipModel`` folder or an open_clip model.

    Args:
        ckpt_path: Lightning checkpoint of a SigLIPModule.
        out: output folder.
        format: ``hf`` (transformers ``SiglipModel``) or ``open_clip``; default: the format of the
            checkpoint the run was fine-tuned from (``--pretrained``), whose processor is carried over.
        tokenizer: SentencePiece ``.model`` to ship (default: the one recorded by the run's datamodule); with
            ``hf`` it is written with an image processor, with ``open_clip`` with a ``preprocess_cfg``, that
            is the run's eval transform (docs/EXPORT.md).
    """
    module, checkpoint = load_checkpoint(ckpt_path)
    source_format, source = pretrained_source(checkpoint)
    format = format or source_format
    if format is None:
        raise UserInputError("--format is required (hf or open_clip): the run was not fine-tuned from --pretrained")
    if source is not None and format == source_format:
        written = export_module(module, format, out, source=source,
                                image_settings=image_settings_from_checkpoint(module, checkpoint))
        print(f"exported {format} model with the processor of {source} to {written}")
        return
    tokenizer = tokenizer or tokenizer_from_checkpoint(checkpoint)
    if tokenizer is None:
        warnings.warn("no tokenizer found in the checkpoint's datamodule settings: exporting weights only")
    elif not Path(tokenizer).is_file():
        raise UserInputError(f"tokenizer model file not found: {tokenizer} (--tokenizer)")
    settings = image_settings_from_checkpoint(module, checkpoint)
    written = export_module(module, format, out, tokenizer, image_settings=settings)
    print(f"exported {format} model to {written}")


def main(argv: List[str]) -> None:
    CLI(export, args=argv, as_positional=False, prog="siglip-lightning export")
