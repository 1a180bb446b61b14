"""SigLIP's sigmoid loss (paper eq. 1; the formula is in ``formulas.py``) over the global batch.

One class, the machinery chosen at run time: on one process the dense ``b x b`` logits (or, with
``tile``, tiles of them: ``tiled.py``); on several processes the paper's ring exchange
(``ring_sigmoid.py``, §3.3), so that every image is scored against every text of all ranks.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from siglip_lightning.losses.base import ContrastiveLoss
from siglip_lightning.losses.collectives import agree_on_batches
from siglip_lightning.losses.formulas import sigmoid_block_loss_sum
from siglip_lightning.losses.ring_sigmoid import ChunkedSigmoidFunction
from siglip_lightning.losses.tiled import TiledSigmoidFunction


class SigmoidLoss(ContrastiveLoss):
    """The paper's sigmoid loss on the global batch: every image against every text of all ranks.

    On W > 1 ranks text embeddings travel around the ring of ranks, per-rank memory flat in W; each
    rank returns its share L_r, whose mean over ranks is the global loss and whose DDP-averaged
    gradient is the global gradient (``ring_sigmoid.py``). Ranks may hold different batch sizes.
    Init as in the paper (Table 4): t' = log 10, b = -10.

    Args:
        local_negatives: score each rank's own ``b x b`` block only (not the paper's loss on several
            devices; the run says so once in its log).
        tile: if set, walk the logits in ``tile x tile`` pieces and never hold a ``b x b`` matrix
            (working memory about two tiles; 2048: 32 MiB in float32); None scores a block at once.
        bidirectional: on several ranks, send text blocks both ways round the ring at once (half
            the steps, as open_clip's ``bidir``), keeping about 4·b·d more memory per rank.
    """

    init_logit_scale = math.log(10.0)
    init_logit_bias = -10.0

    def __init__(self, local_negatives: bool = False, tile: Optional[int] = None, bidirectional: bool = False) -> None:
        super().__init__(local_negatives)
        if tile is not None and tile < 1:
            raise ValueError(f"tile must be a positive number of rows or None, got {tile}")
        self.tile = tile
        self.bidirectional = bidirectional

    def local_loss(self, image_features, text_features, logit_scale, logit_bias) -> torch.Tensor:
        if self.tile is not None:
            return TiledSigmoidFunction.apply(image_features, text_features, logit_scale, logit_bias, self.tile)
        total = sigmoid_block_loss_sum(image_features, text_features, logit_scale, logit_bias, 0)
        return total / image_features.shape[0]

    def global_loss(self, image_features, text_features, logit_scale, logit_bias) -> torch.Tensor:
        wants = self.wants_grad(image_features, text_features, logit_scale, logit_bias)
        sizes, want_grad = agree_on_batches(image_features, text_features, wants)
        return ChunkedSigmoidFunction.apply(image_features, text_features, logit_scale, logit_bias, None, sizes,
                                            self.bidirectional, self.tile, want_grad)
