"""Towers: the contract every tower follows (``contract.py``) and the towers themselves.

- ``vision.py`` / ``text.py``: the ViT and text transformer trained from scratch;
- ``naflex.py`` / ``patches.py``: SigLIP 2's NaFlex ViT (any aspect ratio, a patch budget) and its input;
- ``layers.py`` / ``attention.py``: the blocks they share;
- ``locked.py``: a frozen wrapper (LiT / SigLiT); ``precomputed.py``: cached image embeddings.

Towers initialised from other libraries' folders live with the converters, in ``interop/pretrained_towers.py``.
"""
from siglip_lightning.towers.contract import Tower, TowerSpec, spec_of
from siglip_lightning.towers.layers import BottleneckEmbedding, GELUTanh, MAPHead
from siglip_lightning.towers.locked import LockedTower, unwrap
from siglip_lightning.towers.naflex import NaFlexVisionTower
from siglip_lightning.towers.patches import PatchBatch
from siglip_lightning.towers.precomputed import PrecomputedImageTower
from siglip_lightning.towers.text import TextTower
from siglip_lightning.towers.vision import VisionTower

__all__ = ["BottleneckEmbedding", "GELUTanh", "LockedTower", "MAPHead", "NaFlexVisionTower", "PatchBatch", "PrecomputedImageTower", "TextTower", "Tower",
           "TowerSpec", "VisionTower", "spec_of", "unwrap"]
