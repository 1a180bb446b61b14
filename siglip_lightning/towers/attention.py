"""A leaner forward for ``nn.MultiheadAttention`` (same parameters, same state-dict keys).

``nn.MultiheadAttention.forward`` goes through ``F.multi_head_attention_forward``, which re-checks
and re-lays-out its inputs on every call (sequence-first transposes, separate q/k/v views, mask
merging). For the small towers trained on a CPU that bookkeeping is a visible share of a step.
:class:`FusedMultiheadAttention` keeps the module's parameters (``in_proj_weight``,
``in_proj_bias``, ``out_proj``) so checkpoints, exports and open_clip / transformers interop are
unchanged, and computes batch-first attention with one packed projection and
``F.scaled_dot_product_attention`` (the path timm's ViT takes). Anything it does not cover
(sequence-first layout, float padding masks, boolean attention masks, returned attention weights,
separate k/v projections or inputs) falls back to the stock forward. A boolean ``key_padding_mask``
(True = ignore that key, torch's convention; NaFlex's padded patches) becomes an additive ``-inf``
mask over keys, so a query never sees a padded key and its output does not depend on the padding.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class FusedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose batch-first forward calls ``scaled_dot_product_attention`` directly."""

    @classmethod
    def adopt(cls, attention: nn.MultiheadAttention) -> "FusedMultiheadAttention":
        """Turn an existing module into this class in place (its parameters and init are kept)."""
        attention.__class__ = cls
        return attention

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        padding = key_padding_mask is not None
        if (not self.batch_first or need_weights or (padding and key_padding_mask.dtype != torch.bool) or is_causal
                or (padding and attn_mask is not None)
                or not self._qkv_same_embed_dim or self.bias_k is not None or query.dim() != 3 or key is not value
                or (attn_mask is not None and (attn_mask.dtype == torch.bool or attn_mask.dim() != 2))):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        batch, length, width = query.shape
        heads = self.num_heads
        if query is key and key is value:  # self-attention: one matmul for q, k and v
            qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
            q, k, v = qkv.view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:  # cross-attention (the MAP head's probe): q from the query, k and v packed
            weight_q, weight_kv = self.in_proj_weight.split([width, 2 * width])
            bias_q, bias_kv = (self.in_proj_bias.split([width, 2 * width]) if self.in_proj_bias is not None
                               else (None, None))
            q = F.linear(query, weight_q, bias_q).view(batch, length, heads, -1).transpose(1, 2)
            kv = F.linear(key, weight_kv, bias_kv).view(batch, key.shape[1], 2, heads, -1)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)  # an additive [L, S] float mask (open_clip's causal mask)
        elif padding:  # [b, S] True = padded key -> additive [b, 1, 1, S]
            attn_mask = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
            attn_mask = attn_mask.masked_fill_(key_padding_mask, float("-inf"))[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(batch, length, width)
        return self.out_proj(out), None
