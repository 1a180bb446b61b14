"""SigLiT with precomputed image embeddings: the image "tower" that hands cached embeddings to the loss.

    siglip-lightning cache-embeddings --config configs/siglit.yaml --out data/siglit-cache
    siglip-lightning fit --config configs/siglit_precomputed.yaml --data.path data/siglit-cache

``cache-embeddings`` (``commands/cache_embeddings.py``) builds the run's model and data from the same config as ``fit`` (any
``--key value`` override works), streams each split in order (no shuffle, eval transform), runs the
image tower without autograd and writes parquet shards ``{split}-{index:05d}.parquet`` with columns
``id`` (row number in the split), ``text`` (the caption as stored) and ``embedding`` (the tower's
output before normalisation, float32). That folder is an ordinary dataset: the datamodule streams,
shards and shuffles it, and an embedding column is passed through as the "image" (no decoding).
:class:`PrecomputedImageTower` then hands the embeddings to the loss, so a step costs the text tower.
"""
from __future__ import annotations

import torch
from torch import nn

from siglip_lightning.errors import UserInputError


class PrecomputedImageTower(nn.Module):
    """The image "tower" of a SigLiT run on cached embeddings: returns its input ``[b, dim]``.

    Args:
        dim: embedding size stored in the cache (the locked tower's output size).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.output_dim = dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or embeddings.shape[-1] != self.output_dim:
            raise UserInputError(
                f"PrecomputedImageTower(dim={self.output_dim}) got inputs of shape {tuple(embeddings.shape)}: "
                "point data.path at a cache-embeddings folder and set data.image_column: embedding")
        return embeddings.float()
