"""Layers shared by the towers: SigLIP's tanh-GELU, the fused attention swap, the MAP head and the
bottlenecked token embedding (mSigLIP)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from open_clip.transformer import Transformer
from torch import nn

from siglip_lightning.towers.attention import FusedMultiheadAttention


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in at least float32, and in the parameters' dtype when that is wider, then cast
    back to the input's dtype: bf16 activations meet the float32 gains that ``model/precision.py`` keeps,
    float64 tests stay float64, float32 runs are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        if self.weight is not None:
            compute = torch.promote_types(compute, self.weight.dtype)
        weight = None if self.weight is None else self.weight.to(compute)
        bias = None if self.bias is None else self.bias.to(compute)
        return F.layer_norm(x.to(compute), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class GELUTanh(nn.GELU):
    """The tanh approximation of GELU that SigLIP uses (``gelu_pytorch_tanh`` in transformers)."""

    def __init__(self) -> None:
        super().__init__(approximate="tanh")


def use_fused_attention(transformer: Transformer) -> None:
    """Give open_clip's blocks the leaner attention forward (same weights; see siglip_lightning.towers.attention)."""
    for block in transformer.resblocks:
        if type(block.attn) is nn.MultiheadAttention:
            FusedMultiheadAttention.adopt(block.attn)


class MAPHead(nn.Module):
    """Multihead attention pooling (big_vision's MAP head): one learned probe attends over tokens,
    followed by a residual MLP; returns ``[batch, width]``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.attention = FusedMultiheadAttention(width, heads, batch_first=True)
        self.norm = LayerNorm(width, eps=norm_eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), GELUTanh(), nn.Linear(hidden, width))

    def forward(self, tokens: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``key_padding_mask``: optional bool ``[batch, tokens]``, True where a token is padding (ignored)."""
        probe = self.probe.expand(tokens.shape[0], -1, -1)
        pooled = self.attention(probe, tokens, tokens, key_padding_mask=key_padding_mask, need_weights=False)[0]
        pooled = pooled + self.mlp(self.norm(pooled))
        return pooled[:, 0]


class BottleneckEmbedding(nn.Module):
    """Token embedding through a bottleneck (mSigLIP): ids -> N x K table -> K x W projection.

    With N = 250k and W = 768, K = 96 stores 24M + 74k weights instead of 192M. ``weight`` gives
    the equivalent dense N x W table (exact: the map is linear), used for export.
    """

    def __init__(self, vocab_size: int, embedding_dim: int, width: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, embedding_dim)
        self.proj = nn.Linear(embedding_dim, width, bias=False)
        # std 0.02 per table entry and K^-1/2 in the projection: the product has the dense std 0.02
        nn.init.normal_(self.table.weight, std=0.02)
        nn.init.normal_(self.proj.weight, std=embedding_dim**-0.5)

    @property
    def weight(self) -> torch.Tensor:
        return self.proj(self.table.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table(ids))
