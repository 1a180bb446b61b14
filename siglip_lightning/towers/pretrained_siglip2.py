"""Towers initialised from a local Hugging Face ``Siglip2Model`` folder (SigLIP 2, NaFlex). Offline;
usable from YAML, as ``HFVisionTower`` / ``HFTextTower`` are for ``SiglipModel``::

    model:
      image_tower:
        class_path: siglip_lightning.HFSiglip2VisionTower
        init_args: {path: /models/siglip2-base-patch16-naflex}

They are plain ``NaFlexVisionTower`` / ``TextTower`` afterwards (same keys). The data must match the
folder: :func:`~siglip_lightning.interop.hf_siglip2.finetune_settings` lists every setting.
"""
from __future__ import annotations

from siglip_lightning.interop.hf_siglip2 import naflex_from_siglip2, text_from_siglip2
from siglip_lightning.interop.keys import load_exact
from siglip_lightning.towers.naflex import NaFlexVisionTower
from siglip_lightning.towers.text import TextTower


class HFSiglip2VisionTower(NaFlexVisionTower):
    """The NaFlex image tower of a local Hugging Face ``Siglip2Model`` folder.

    Args:
        path: folder with ``config.json`` and ``*.safetensors`` (``save_pretrained`` output).
        grad_checkpointing: recompute block activations in backward.
    """

    def __init__(self, path: str, grad_checkpointing: bool = False) -> None:
        kwargs, state = naflex_from_siglip2(path)
        super().__init__(**kwargs, grad_checkpointing=grad_checkpointing)
        load_exact(self, state, path)


class HFSiglip2TextTower(TextTower):
    """The text tower of a local Hugging Face ``Siglip2Model`` folder.

    Args:
        path: folder with ``config.json`` and ``*.safetensors``.
        grad_checkpointing: recompute block activations in backward.
    """

    def __init__(self, path: str, grad_checkpointing: bool = False) -> None:
        kwargs, state = text_from_siglip2(path)
        super().__init__(**kwargs, grad_checkpointing=grad_checkpointing)
        load_exact(self, state, path)
