"""Towers initialised from other libraries' local folders: a Hugging Face ``SiglipModel`` or
``Siglip2Model`` folder, or an open_clip model (architecture by name, weights from a file). Offline;
usable from YAML by their public names::

    model:
      image_tower:
        class_path: siglip_lightning.HFVisionTower
        init_args: {path: /models/siglip-base-patch16-224}

They are plain ``VisionTower`` / ``NaFlexVisionTower`` / ``TextTower`` afterwards (same keys), so
checkpoints, export and locking work unchanged. t' and b are not towers: ``--pretrained FOLDER``
(``pretrained_folder.py``, whose ``FAMILIES`` names these classes) sets ``model.init_logit_scale`` /
``model.init_logit_bias`` from the checkpoint along with the towers. A folder's weights are read once
for both towers (``read_once.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from siglip_lightning.interop import hf, openclip
from siglip_lightning.interop.hf_siglip2 import naflex_from_siglip2, text_from_siglip2
from siglip_lightning.interop.keys import load_exact
from siglip_lightning.interop.read_once import read_once, stamp
from siglip_lightning.towers import NaFlexVisionTower, TextTower, VisionTower


class _FromHFFolder:
    """A tower whose constructor arguments and weights come from ``read(path)``: (kwargs, state dict)."""

    read: Callable[[str], Tuple[Dict, Dict[str, torch.Tensor]]]

    def __init__(self, path: str, grad_checkpointing: bool = False) -> None:
        kwargs, state = self.read(path)
        super().__init__(**kwargs, grad_checkpointing=grad_checkpointing)
        load_exact(self, state, path)


class HFVisionTower(_FromHFFolder, VisionTower):
    """The image tower of a local Hugging Face ``SiglipModel`` folder.

    Args:
        path: folder with ``config.json`` and ``*.safetensors`` (``save_pretrained`` output).
        grad_checkpointing: recompute block activations in backward.
    """

    read = staticmethod(hf.vision_from_hf)


class HFTextTower(_FromHFFolder, TextTower):
    """The text tower of a local Hugging Face ``SiglipModel`` folder.

    Args:
        path: folder with ``config.json`` and ``*.safetensors``.
        grad_checkpointing: recompute block activations in backward.
    """

    read = staticmethod(hf.text_from_hf)


class HFSiglip2VisionTower(_FromHFFolder, NaFlexVisionTower):
    """The NaFlex image tower of a local Hugging Face ``Siglip2Model`` folder (SigLIP 2). The data must
    match the folder: :func:`~siglip_lightning.interop.hf_siglip2.finetune_settings` lists every setting.

    Args:
        path: folder with ``config.json`` and ``*.safetensors`` (``save_pretrained`` output).
        grad_checkpointing: recompute block activations in backward.
    """

    read = staticmethod(naflex_from_siglip2)


class HFSiglip2TextTower(_FromHFFolder, TextTower):
    """The text tower of a local Hugging Face ``Siglip2Model`` folder (the same layout as ``SiglipModel``'s).

    Args:
        path: folder with ``config.json`` and ``*.safetensors``.
        grad_checkpointing: recompute block activations in backward.
    """

    read = staticmethod(text_from_siglip2)


OPEN_CLIP_WEIGHTS = (openclip.WEIGHTS, "open_clip_pytorch_model.bin")  # what open_clip's local-dir: folders hold


def open_clip_model(model_name: str, checkpoint_path: Optional[str] = None) -> nn.Module:
    """The open_clip model, built and loaded once per process for both towers and t', b (weights: the
    file given, else a ``local-dir:`` folder's own, safetensors or ``.bin``)."""
    if checkpoint_path is None and model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:"):]).expanduser()
        checkpoint_path = next((str(folder / f) for f in OPEN_CLIP_WEIGHTS if (folder / f).is_file()), None)
    weights = Path(checkpoint_path).expanduser() if checkpoint_path else None
    key = ("open_clip", model_name, stamp([weights]) if weights is not None and weights.is_file() else checkpoint_path)
    return read_once(key, lambda: openclip.create_open_clip(model_name, checkpoint_path))


class OpenCLIPVisionTower(VisionTower):
    """The image tower of an open_clip SigLIP-layout model (timm ViT with a MAP head).

    Args:
        model_name: open_clip architecture: a built-in or registered name, or ``local-dir:FOLDER``.
        checkpoint_path: weights file (``.safetensors``, ``.bin``, ``.pt``); ``None`` keeps the
            architecture's random init.
        grad_checkpointing: recompute block activations in backward.
    """

    def __init__(self, model_name: str, checkpoint_path: Optional[str] = None, grad_checkpointing: bool = False) -> None:
        kwargs, state = openclip.vision_from_open_clip(open_clip_model(model_name, checkpoint_path))
        super().__init__(**kwargs, grad_checkpointing=grad_checkpointing)
        load_exact(self, state, checkpoint_path or model_name)


class OpenCLIPTextTower(TextTower):
    """The text tower of an open_clip SigLIP-layout model (bidirectional ``TextTransformer``).

    Args:
        model_name: open_clip architecture: a built-in or registered name, or ``local-dir:FOLDER``.
        checkpoint_path: weights file; ``None`` keeps the architecture's random init.
        grad_checkpointing: recompute block activations in backward.
    """

    def __init__(self, model_name: str, checkpoint_path: Optional[str] = None, grad_checkpointing: bool = False) -> None:
        kwargs, state = openclip.text_from_open_clip(open_clip_model(model_name, checkpoint_path))
        super().__init__(**kwargs, grad_checkpointing=grad_checkpointing)
        load_exact(self, state, checkpoint_path or model_name)
