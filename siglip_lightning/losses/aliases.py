"""The loss names of earlier releases, kept so that existing configs and checkpoints still load.

Each is one of the two families with its options set; new configs name the family
(``SigmoidLoss`` / ``SoftmaxLoss``) and its options instead.
"""
from __future__ import annotations

from typing import Optional

from siglip_lightning.losses.sigmoid import SigmoidLoss
from siglip_lightning.losses.softmax import SoftmaxLoss


class TiledSigmoidLoss(SigmoidLoss):
    """``SigmoidLoss(tile=tile)``: never holds the full logits matrix.

    Args:
        tile: side of the square tiles of the logits matrix walked one at a time.
    """

    def __init__(self, tile: int = 2048) -> None:
        super().__init__(tile=tile)


class ChunkedSigmoidLoss(SigmoidLoss):
    """``SigmoidLoss(bidirectional=..., tile=...)``: the ring over several ranks (now the default).

    Args:
        bidirectional: send text blocks both ways round the ring at once.
        tile: score each ring block in ``tile x tile`` pieces; None: a block at once.
    """

    def __init__(self, bidirectional: bool = False, tile: Optional[int] = None) -> None:
        super().__init__(tile=tile, bidirectional=bidirectional)


class DistributedSoftmaxLoss(SoftmaxLoss):
    """``SoftmaxLoss()``: the gathered global softmax (now the default)."""


class ChunkedSoftmaxLoss(SoftmaxLoss):
    """``SoftmaxLoss(ring=True, bidirectional=...)``.

    Args:
        bidirectional: send text blocks both ways round the ring at once.
    """

    def __init__(self, bidirectional: bool = False) -> None:
        super().__init__(ring=True, bidirectional=bidirectional)
