"""Contrastive losses with one interface: ``loss(zimg, ztxt, logit_scale, logit_bias=None)``."""
from siglip_lightning.losses.base import ContrastiveLoss
from siglip_lightning.losses.chunked import ChunkedSigmoidLoss
from siglip_lightning.losses.chunked_softmax import ChunkedSoftmaxLoss
from siglip_lightning.losses.sigmoid import SigmoidLoss, sigmoid_block_loss_and_grad, sigmoid_block_loss_sum
from siglip_lightning.losses.softmax import DistributedSoftmaxLoss, SoftmaxLoss
from siglip_lightning.losses.tiled import TiledSigmoidLoss

__all__ = [
    "ChunkedSigmoidLoss",
    "ChunkedSoftmaxLoss",
    "ContrastiveLoss",
    "DistributedSoftmaxLoss",
    "SigmoidLoss",
    "SoftmaxLoss",
    "TiledSigmoidLoss",
    "sigmoid_block_loss_and_grad",
    "sigmoid_block_loss_sum",
]
