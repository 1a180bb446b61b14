"""Contrastive losses with one interface: ``loss(zimg, ztxt, logit_scale, logit_bias=None)``."""
from siglip_lightning.losses.base import ContrastiveLoss
from siglip_lightning.losses.sigmoid import SigmoidLoss, sigmoid_block_loss_sum
from siglip_lightning.losses.softmax import SoftmaxLoss

__all__ = ["ContrastiveLoss", "SigmoidLoss", "SoftmaxLoss", "sigmoid_block_loss_sum"]
