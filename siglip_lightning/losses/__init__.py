"""Contrastive losses with one interface: ``loss(zimg, ztxt, logit_scale, logit_bias=None)``.

Two families, both global over all ranks by default: ``SigmoidLoss`` (SigLIP) and ``SoftmaxLoss``
(CLIP). ``base.py`` owns validation and the shared prologue, ``formulas.py`` the maths. The machinery
they pick at run time is internal: ``tiled.py`` and ``blockwise.py`` (tile-by-tile scoring with
gradients computed in forward), ``ring.py`` / ``ring_sigmoid.py`` / ``ring_softmax.py`` (the exchange
round the ranks), ``collectives.py`` (batch-size agreement, gather with gradients).
"""
from siglip_lightning.losses.aliases import ChunkedSigmoidLoss, ChunkedSoftmaxLoss, DistributedSoftmaxLoss, TiledSigmoidLoss
from siglip_lightning.losses.base import ContrastiveLoss
from siglip_lightning.losses.sigmoid import SigmoidLoss
from siglip_lightning.losses.softmax import SoftmaxLoss

__all__ = [
    "ChunkedSigmoidLoss",
    "ChunkedSoftmaxLoss",
    "ContrastiveLoss",
    "DistributedSoftmaxLoss",
    "SigmoidLoss",
    "SoftmaxLoss",
    "TiledSigmoidLoss",
]
