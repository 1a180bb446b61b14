"""The tokenizer and image preprocessing of an ``--format open_clip`` export, as open_clip reads them.

- text: ``open_clip.get_tokenizer("local-dir:OUT")`` builds an ``HFTokenizer`` over the transformers
  tokenizer files in the folder when ``text_cfg.hf_tokenizer_name`` is set. We write the same
  ``SiglipTokenizer`` as the hf export (``interop/hf_processor.siglip_tokenizer``), whose ids are the
  run's: it canonicalises text as training does. open_clip cleans text first; ``clean='whitespace'``
  (ftfy + HTML unescape + whitespace collapse) changes nothing canonicalisation keeps, whereas its
  ``'canonicalize'`` turns ``_`` into a space where SiglipTokenizer and training drop it.
- images: ``preprocess_cfg`` with the run's eval transform: a square resize (``resize_mode='squash'``)
  with the run's resample, and its mean / std. open_clip resizes the PIL image with PIL, as the run's
  ``pil_exact`` / ``open_clip`` resize backends do (``pil`` agrees unless it pre-shrinks an image over
  3x the target; ``torchvision`` differs by resampling rounding: a warning says so).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Dict

from PIL import Image

from siglip_lightning.interop.hf_processor import siglip_tokenizer

CLEAN = "whitespace"
_INTERPOLATION = {int(Image.Resampling.BILINEAR): "bilinear", int(Image.Resampling.BICUBIC): "bicubic"}


def preprocess_cfg(image_settings: Dict) -> Dict:
    """open_clip ``preprocess_cfg`` of the run's eval transform (``hf_processor.image_settings``)."""
    backend = image_settings.get("_backend", "pil")
    if backend == "torchvision":
        warnings.warn("this run's eval transform resizes with data.image_resize_backend=torchvision; open_clip "
                      "resizes with PIL, so its image tensors differ slightly from the run's (docs/EXPORT.md)")
    normalize = image_settings.get("do_normalize", True)
    return {"size": [image_settings["size"]["height"], image_settings["size"]["width"]],
            "mean": list(image_settings["image_mean"]) if normalize else [0.0] * 3,
            "std": list(image_settings["image_std"]) if normalize else [1.0] * 3,
            "interpolation": _INTERPOLATION[int(image_settings["resample"])], "resize_mode": "squash"}


def write_open_clip_processor(out: Path, sentencepiece_model: Path, image_settings: Dict | None) -> None:
    """Tokenizer files + ``text_cfg`` tokenizer settings + ``preprocess_cfg`` into an exported folder."""
    config_path = out / "open_clip_config.json"
    config = json.loads(config_path.read_text())
    text = config["model_cfg"]["text_cfg"]
    siglip_tokenizer(sentencepiece_model, text["context_length"]).save_pretrained(str(out))
    # the name is informational: for local-dir: open_clip reads the tokenizer from the folder itself
    text.update(hf_tokenizer_name=out.name, tokenizer_kwargs={"clean": CLEAN})
    if image_settings is not None:
        config["preprocess_cfg"] = preprocess_cfg(image_settings)
    config_path.write_text(json.dumps(config, indent=2))
