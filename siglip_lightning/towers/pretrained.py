"""Towers initialised from local pre-trained weights: a Hugging Face ``SiglipModel`` folder or an
open_clip model (architecture by name, weights from a file). Offline; usable from YAML::

    model:
      image_tower:
        class_path: siglip_lightning.HFVisionTower
        init_args: {path: /models/siglip-base-patch16-224}

They are plain ``VisionTower``/``TextTower`` afterwards (same keys), so checkpoints, export and
locking work unchanged. t' and b are not towers: ``--pretrained FOLDER`` (``interop/pretrained_folder.py``)
sets ``model.init_logit_scale`` / ``model.init_logit_bias`` from the checkpoint along with the towers.
"""
from __future__ import annotations

from typing import Optional

from siglip_lightning.interop import hf, openclip
from siglip_lightning.interop.keys import load_exact
from siglip_lightning.towers import TextTower, VisionTower


class HFVisionTower(VisionTower):
    """The image tower of a local Hugging Face ``SiglipModel`` folder.

    Args:
        path: folder with ``config.json`` and ``*.safetensors`` (``save_pretrained`` output).
        grad_checkpointing: recompute block activations in backward.
    """

    def __init__(self, path: str, grad_checkpointing: bool = False) -> None:
        kwargs, state = hf.vision_from_hf(path)
        super().__init__(**kwargs, grad_checkpointing=grad_checkpointing)
        load_exact(self, state, path)


class HFTextTower(TextTower):
    """The text tower of a local Hugging Face ``SiglipModel`` folder.

    Args:
        path: folder with ``config.json`` and ``*.safetensors``.
        grad_checkpointing: recompute block activations in backward.
    """

    def __init__(self, path: str, grad_checkpointing: bool = False) -> None:
        kwargs, state = hf.text_from_hf(path)
        super().__init__(**kwargs, grad_checkpointing=grad_checkpointing)
        load_exact(self, state, path)


class OpenCLIPVisionTower(VisionTower):
    """The image tower of an open_clip SigLIP-layout model (timm ViT with a MAP head).

    Args:
        model_name: open_clip architecture: a built-in or registered name, or ``local-dir:FOLDER``.
        checkpoint_path: weights file (``.safetensors``, ``.bin``, ``.pt``); ``None`` keeps the
            architecture's random init.
        grad_checkpointing: recompute block activations in backward.
    """

    def __init__(self, model_name: str, checkpoint_path: Optional[str] = None, grad_checkpointing: bool = False) -> None:
        kwargs, state = openclip.vision_from_open_clip(openclip.create_open_clip(model_name, checkpoint_path))
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
        kwargs, state = openclip.text_from_open_clip(openclip.create_open_clip(model_name, checkpoint_path))
        super().__init__(**kwargs, grad_checkpointing=grad_checkpointing)
        load_exact(self, state, checkpoint_path or model_name)
