"""siglip-lightning: train image-text models with the SigLIP sigmoid loss (and the CLIP baseline)."""
from siglip_lightning.data import ImageTextDataModule, ShapesSpec
from siglip_lightning.losses import (
    ChunkedSigmoidLoss,
    ChunkedSoftmaxLoss,
    ContrastiveLoss,
    DistributedSoftmaxLoss,
    SigmoidLoss,
    SoftmaxLoss,
    TiledSigmoidLoss,
)
from siglip_lightning.model.module import SigLIPModule
from siglip_lightning.towers.locked import LockedTower
from siglip_lightning.towers.precomputed import PrecomputedImageTower
from siglip_lightning.towers import TextTower, VisionTower
from siglip_lightning.towers.naflex import NaFlexVisionTower
from siglip_lightning.interop.pretrained_towers import (
    HFSiglip2TextTower, HFSiglip2VisionTower, HFTextTower, HFVisionTower, OpenCLIPTextTower, OpenCLIPVisionTower,
)

__version__ = "0.1.0"
__all__ = [
    "ChunkedSigmoidLoss",
    "ChunkedSoftmaxLoss",
    "ContrastiveLoss",
    "HFSiglip2TextTower",
    "HFSiglip2VisionTower",
    "HFTextTower",
    "HFVisionTower",
    "LockedTower",
    "NaFlexVisionTower",
    "OpenCLIPTextTower",
    "OpenCLIPVisionTower",
    "PrecomputedImageTower",
    "DistributedSoftmaxLoss",
    "ImageTextDataModule",
    "ShapesSpec",
    "SigLIPModule",
    "SigmoidLoss",
    "SoftmaxLoss",
    "TextTower",
    "TiledSigmoidLoss",
    "VisionTower",
]
