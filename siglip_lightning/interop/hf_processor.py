"""The processor of a ``--format hf`` export: the run's tokenizer and evaluation transform, as transformers reads them.

``AutoProcessor.from_pretrained(out)`` and ``pipeline("zero-shot-image-classification", model=out)``
need a tokenizer and an image processor in the folder. From-scratch runs get:

- text: a ``SiglipTokenizer`` over the run's SentencePiece model. Training canonicalises text as it
  does (``text/sentencepiece.canonicalize``), so the ids are the run's. Two settings keep them so:
  ``split_special_tokens`` (a caption containing ``</s>`` is text, as in training) and no
  ``attention_mask`` in its outputs (our text tower attends to every position, padding included, as
  big_vision's does; transformers masks padding when handed a mask, which the pipeline would do).
- images: a ``SiglipImageProcessor`` with the run's eval transform (``data.image_size``, resample,
  rescale 1/255, ``data.image_mean`` / ``image_std``). transformers 5 resizes with torchvision
  (antialiased, on uint8), which is ``data.image_resize_backend: torchvision``; other backends
  differ by resampling rounding (a warning says so; docs/EXPORT.md gives the measured bound).
"""
from __future__ import annotations

import string
import warnings
from pathlib import Path
from typing import Dict

from siglip_lightning.data.transforms import RESAMPLE

PIPELINE_TEXT_LENGTH = 64  # transformers' zero-shot pipeline always pads SigLIP / SigLIP 2 text to this
TEXT_ONLY_IDS = ["input_ids"]  # no attention_mask: see the module docstring


def image_settings(datamodule_params: Dict) -> Dict:
    """The eval transform of a fixed-size run (its datamodule hyper-parameters) as image processor settings."""
    size = int(datamodule_params.get("image_size", 32))
    mean = [float(x) for x in datamodule_params.get("image_mean") or (0.5, 0.5, 0.5)]
    std = [float(x) for x in datamodule_params.get("image_std") or (0.5, 0.5, 0.5)]
    resample = datamodule_params.get("image_resample") or "bilinear"
    return {"size": {"height": size, "width": size}, "resample": int(RESAMPLE[resample]), "do_resize": True,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": (mean, std) != ([0.0] * 3, [1.0] * 3),
            "image_mean": mean, "image_std": std, "do_convert_rgb": True,
            "_backend": datamodule_params.get("image_resize_backend") or "pil"}


def siglip_tokenizer(sentencepiece_model: Path, context_length: int):
    """transformers' ``SiglipTokenizer`` over the model, giving the ids the run trained on."""
    from transformers import SiglipTokenizer

    warn_if_trained_on_raw_text(sentencepiece_model)
    return SiglipTokenizer(vocab_file=str(sentencepiece_model), model_max_length=context_length,
                           split_special_tokens=True, model_input_names=TEXT_ONLY_IDS)


def warn_if_trained_on_raw_text(sentencepiece_model: Path) -> None:
    """A vocabulary with punctuation pieces was trained before captions were canonicalised: such a run
    saw punctuation that ``SiglipTokenizer`` (and training here, now) removes."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(sentencepiece_model))
    pieces = (processor.id_to_piece(i) for i in range(processor.get_piece_size())
              if not (processor.is_control(i) or processor.is_unknown(i)))
    if any(ch in string.punctuation for piece in pieces for ch in piece):
        warnings.warn(
            f"{sentencepiece_model} has punctuation in its vocabulary: it was trained on un-canonicalised text "
            "(siglip-lightning before captions were canonicalised like SiglipTokenizer's), so the exported "
            "tokenizer's ids differ from the run's on captions with punctuation; retrain for exact ids")


def save_siglip_processor(out_dir: Path, tokenizer, settings: Dict) -> None:
    """Write a ``SiglipProcessor`` (tokenizer + image processor with ``settings``) into ``out_dir``."""
    from transformers import SiglipImageProcessor, SiglipProcessor

    settings = dict(settings)
    backend = settings.pop("_backend", "torchvision")
    if backend != "torchvision":
        warnings.warn(
            f"this run's eval transform resizes with data.image_resize_backend={backend}; transformers 5's image "
            "processor resizes with torchvision, so exported pixel values differ slightly from the run's "
            "(see docs/EXPORT.md); train with data.image_resize_backend=torchvision for identical tensors"
            + (", or load with AutoProcessor.from_pretrained(out, backend='pil'), which is pil_exact"
               if backend == "pil_exact" else ""))
    SiglipProcessor(image_processor=SiglipImageProcessor(**settings), tokenizer=tokenizer).save_pretrained(str(out_dir))


def warn_if_pipeline_cannot_run(context_length: int) -> None:
    """transformers 5.25's zero-shot pipeline pads text to 64 tokens whatever the tokenizer says."""
    if context_length < PIPELINE_TEXT_LENGTH:
        warnings.warn(
            f"the text tower has {context_length} positions: transformers' zero-shot-image-classification "
            f"pipeline pads SigLIP text to {PIPELINE_TEXT_LENGTH} tokens and will fail on this model; "
            "AutoModel + AutoProcessor (padding='max_length') work. Train with data.context_length=64 "
            "(and a text tower of 64 positions) to use the pipeline")
