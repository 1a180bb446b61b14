"""Towers: the contract every tower follows (``contract.py``) and the towers themselves.

- ``vision.py`` / ``text.py``: the ViT and text transformer trained from scratch;
- ``layers.py`` / ``attention.py``: the blocks they share;
- ``locked.py``: a frozen wrapper (LiT / SigLiT); ``precomputed.py``: cached image embeddings;
- ``pretrained.py``: towers initialised from local Hugging Face or open_clip checkpoints.
"""
from siglip_lightning.towers.contract import Tower, TowerSpec, spec_of
from siglip_lightning.towers.layers import BottleneckEmbedding, GELUTanh, MAPHead
from siglip_lightning.towers.locked import LockedTower, unwrap
from siglip_lightning.towers.precomputed import PrecomputedImageTower
from siglip_lightning.towers.text import TextTower
from siglip_lightning.towers.vision import VisionTower

__all__ = ["BottleneckEmbedding", "GELUTanh", "LockedTower", "MAPHead", "PrecomputedImageTower", "TextTower", "Tower",
           "TowerSpec", "VisionTower", "spec_of", "unwrap"]
