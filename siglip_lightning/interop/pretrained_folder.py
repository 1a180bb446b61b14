"""What ``--pretrained PATH`` takes from a released checkpoint: towers, t' and b, tokenizer, image preprocessing.

A fine-tuning run must start from the checkpoint's weights *and* its t' and b, and feed it text and
images prepared exactly as in pre-training, or its numbers drop before the first step. This module
turns a local model folder into the run settings that achieve that, as dotted config keys
(``model.init_logit_scale``, ``data.image_mean``, ...); ``cli.py`` hands them to the parser as
defaults that anything set in a config file or on the command line overrides.

One table, :data:`FAMILIES`, keyed by ``config.json``'s ``model_type`` (``siglip``, ``siglip2``) or
``open_clip`` (a folder with ``open_clip_config.json``), names each checkpoint family's settings
reader, its tower classes (``pretrained_towers.py``) and its tokenizer type; whatever asks "did this
run start from released weights" (``wise-ft``, ``export``) asks :func:`released_source`, which reads
the same table. A new family adds one entry.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from torch import nn

from siglip_lightning.errors import UserInputError

Settings = Dict[str, Any]  # dotted config key -> value


def hf_processor_settings(folder: Path) -> dict:
    """The image processor dict of a Hugging Face folder, from either layout.

    transformers 5 writes ``processor_config.json`` (``{"image_processor": {...}, ...}``); older
    folders (and every released SigLIP) have ``preprocessor_config.json`` holding it directly.
    """
    combined, single = folder / "processor_config.json", folder / "preprocessor_config.json"
    if combined.is_file():
        settings = json.loads(combined.read_text()).get("image_processor")
        if settings:
            return settings
    if single.is_file():
        return json.loads(single.read_text())
    raise UserInputError(f"{folder} has no preprocessor_config.json or processor_config.json: the image "
                         "preprocessing of the checkpoint is unknown (save the processor with the model)")


PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def _pil_image_processor(settings: dict) -> bool:
    """Whether the installed transformers resizes this folder's images with PIL (4.x; 5.x's "...Pil"
    classes) rather than with an antialiased torchvision resize (5.x's default ``SiglipImageProcessor``)."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return major < 5 or str(settings.get("image_processor_type", "")).endswith("Pil")


def hf_image_settings(folder: Path) -> Settings:
    """data.* keys reproducing a SigLIP image processor: square resize, x/255, (x - mean) / std."""
    p = hf_processor_settings(folder)
    size = p.get("size") or {}
    height, width = size.get("height"), size.get("width")
    if height is None or height != width:
        raise UserInputError(f"{folder}: only a fixed square resize is supported, the processor has size {size}")
    if p.get("do_center_crop"):
        raise UserInputError(f"{folder}: the processor center-crops; SigLIP processors resize without cropping")
    resample = PIL_RESAMPLE.get(p.get("resample", 3))
    if resample is None:
        raise UserInputError(f"{folder}: resample={p.get('resample')} is not supported (2: bilinear, 3: bicubic)")
    if not p.get("do_rescale", True) or abs(p.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise UserInputError(f"{folder}: only rescaling by 1/255 is supported, got do_rescale={p.get('do_rescale')}, "
                             f"rescale_factor={p.get('rescale_factor')}")
    normalize = p.get("do_normalize", True)
    mean = p.get("image_mean", [0.5] * 3) if normalize else [0.0] * 3
    std = p.get("image_std", [0.5] * 3) if normalize else [1.0] * 3
    backend = "pil_exact" if _pil_image_processor(p) else "torchvision"
    return {"data.image_size": int(height), "data.image_mean": [float(x) for x in mean],
            "data.image_std": [float(x) for x in std], "data.image_resample": resample,
            "data.image_resize_backend": backend}


def siglip_settings(folder: Path, config: dict) -> Settings:
    """A transformers ``SiglipModel`` folder (``save_pretrained`` output, e.g. google/siglip-base-patch16-224)."""
    from siglip_lightning.interop.hf import logits_from_hf
    from siglip_lightning.text.pretrained import require_tokenizer_files

    require_tokenizer_files(folder, ("spiece.model", "tokenizer.json"))
    scale, bias = logits_from_hf(folder)
    context = (config.get("text_config") or {}).get("max_position_embeddings", 64)
    return {
        **FAMILIES["siglip"].towers(path=str(folder)),
        "model.init_logit_scale": scale, "model.init_logit_bias": bias,
        "data.tokenizer_type": "hf", "data.tokenizer_path": str(folder),
        "data.context_length": int(context),
        **hf_image_settings(folder),
    }


def _open_clip_logits(folder: Path) -> tuple:
    from siglip_lightning.interop.pretrained_towers import OPEN_CLIP_WEIGHTS, open_clip_model

    if not any((folder / name).is_file() for name in OPEN_CLIP_WEIGHTS):
        raise UserInputError(f"no {' or '.join(OPEN_CLIP_WEIGHTS)} in {folder}")
    model = open_clip_model(f"local-dir:{folder}")  # read once: the towers take theirs from the same model
    if getattr(model, "logit_bias", None) is None:
        raise UserInputError(f"{folder} has no logit_bias: not a SigLIP (sigmoid-loss) open_clip model")
    return float(model.logit_scale.detach().reshape(())), float(model.logit_bias.detach().reshape(()))


OPEN_CLIP_MEAN, OPEN_CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def open_clip_settings(folder: Path, config: dict) -> Settings:
    """An open_clip SigLIP model folder (``open_clip_config.json`` + weights: open_clip's ``local-dir:``)."""
    model_cfg, pre = config.get("model_cfg") or {}, config.get("preprocess_cfg") or {}
    if pre.get("resize_mode", "squash") != "squash":
        raise UserInputError(f"{folder}: preprocess_cfg.resize_mode={pre['resize_mode']!r} is not supported "
                             "(SigLIP models use 'squash', a plain resize)")
    interpolation = pre.get("interpolation", "bicubic")
    if interpolation not in ("bilinear", "bicubic"):
        raise UserInputError(f"{folder}: preprocess_cfg.interpolation={interpolation!r} is not supported")
    size = pre.get("size", (model_cfg.get("vision_cfg") or {}).get("image_size", 224))
    size = size[0] if isinstance(size, (list, tuple)) else size
    name = f"local-dir:{folder}"
    scale, bias = _open_clip_logits(folder)
    return {
        **FAMILIES["open_clip"].towers(model_name=name),
        "model.init_logit_scale": scale, "model.init_logit_bias": bias,
        "data.tokenizer_type": "open_clip", "data.tokenizer_path": name,
        "data.context_length": int((model_cfg.get("text_cfg") or {}).get("context_length", 77)),
        "data.image_size": int(size), "data.image_mean": [float(x) for x in pre.get("mean", OPEN_CLIP_MEAN)],
        "data.image_std": [float(x) for x in pre.get("std", OPEN_CLIP_STD)], "data.image_resample": interpolation,
        "data.image_resize_backend": "open_clip",
    }


def siglip2_settings(folder: Path, config: dict) -> Settings:
    """A transformers ``Siglip2Model`` (NaFlex) folder: see ``interop/hf_siglip2.finetune_settings``."""
    from siglip_lightning.interop.hf_siglip2 import finetune_settings

    return finetune_settings(folder)


@dataclass(frozen=True)
class Family:
    """One checkpoint family: how ``--pretrained`` reads it and what a run started from it holds."""

    read: Callable[[Path, dict], Settings]  # the run settings of a folder (towers, t', b, its own tokenizer, images)
    image_tower: str  # public class names (``siglip_lightning.NAME``) of the towers built from the folder
    text_tower: str
    export_format: str  # ``export --format`` that writes the family back

    def towers(self, **init_args) -> Settings:
        return {key: {"class_path": f"siglip_lightning.{name}", "init_args": dict(init_args)}
                for key, name in (("model.image_tower", self.image_tower), ("model.text_tower", self.text_tower))}


# model_type -> family. SigLIP 2 fixed-resolution releases are model_type "siglip" (SiglipModel).
FAMILIES: Dict[str, Family] = {
    "siglip": Family(siglip_settings, "HFVisionTower", "HFTextTower", "hf"),
    "open_clip": Family(open_clip_settings, "OpenCLIPVisionTower", "OpenCLIPTextTower", "open_clip"),
    "siglip2": Family(siglip2_settings, "HFSiglip2VisionTower", "HFSiglip2TextTower", "hf"),
}


class AnyFolderTower(nn.Module):
    """Stands in for a folder's tower while the CLI parses to find ``--pretrained`` (never built): it
    takes the arguments of every family's towers, so that ``--model.image_tower.init_args.X`` given
    without a ``class_path`` parses before the folder's tower class is known.

    Args:
        path: a Hugging Face folder.
        model_name: an open_clip model name.
        checkpoint_path: an open_clip weights file.
        grad_checkpointing: recompute block activations in backward.
    """

    def __init__(self, path: Optional[str] = None, model_name: Optional[str] = None,
                 checkpoint_path: Optional[str] = None, grad_checkpointing: bool = False) -> None:
        raise RuntimeError("AnyFolderTower only stands in while --pretrained is looked for")


def stand_in_towers(keys) -> Settings:
    return {key: {"class_path": f"{__name__}.AnyFolderTower"} for key in keys}


def _class_paths(value: Any) -> Iterator[Tuple[str, dict]]:
    """(class_path, init_args) of every class in a run's hyper-parameters, nested ones (a
    ``LockedTower`` around a pretrained tower) included."""
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, dict):
        if isinstance(value.get("class_path"), str):
            yield value["class_path"], value.get("init_args") or {}
        for inner in value.values():
            yield from _class_paths(inner)


def _tower_source(tower_hparams: Any) -> Optional[Tuple[str, str]]:
    for class_path, init_args in _class_paths(tower_hparams):
        name = class_path.rsplit(".", 1)[-1]
        for family_name, family in FAMILIES.items():
            if name in (family.image_tower, family.text_tower):
                return family_name, str(init_args.get("path") or init_args.get("model_name"))
    return None


def released_source(hparams: dict, both_towers: bool = False) -> Optional[Tuple[str, str]]:
    """(family, folder or open_clip name) of the released checkpoint a run's towers were built from:
    either tower (``both_towers``: both, from the same folder, as export needs to carry its processor).

    Tower classes are matched by name (the last part of ``class_path``), so a checkpoint that names a
    tower by its module path is recognised as one that names it by its public name.
    """
    sources = [_tower_source((hparams or {}).get(key)) for key in ("image_tower", "text_tower")]
    if both_towers:
        return sources[0] if sources[0] is not None and sources[0] == sources[1] else None
    return next((source for source in sources if source is not None), None)


def pretrained_settings(path: str) -> Settings:
    """Run settings (dotted keys) that start a fit from the checkpoint folder ``path``."""
    folder = Path(path[len("local-dir:"):] if path.startswith("local-dir:") else path).expanduser().resolve()
    if not folder.is_dir():
        raise UserInputError(f"--pretrained {path}: not a folder (a local Hugging Face or open_clip model folder)")
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        family = config.get("model_type")
    elif (folder / "open_clip_config.json").is_file():
        config, family = json.loads((folder / "open_clip_config.json").read_text()), "open_clip"
    else:
        raise UserInputError(f"--pretrained {path}: no config.json (Hugging Face) or open_clip_config.json (open_clip)")
    if family not in FAMILIES:
        raise UserInputError(f"--pretrained {path}: model_type {family!r} is not supported "
                             f"(supported: {sorted(FAMILIES)})")
    return FAMILIES[family].read(folder, config)
