"""LocCa's text decoder: a pre-norm transformer decoder that cross-attends to the image's patch tokens.

Ids: the text vocabulary [0, V), then ``box_bins`` coordinate tokens [V, V + bins) (LocCa writes a
box as four quantised coordinates), then BOS (first input of autoregressive decoding), MASK (every
input of parallel prediction) and the two task prompts REF (caption -> box) and GND (box -> caption).
Logits cover words and coordinates. Positions are learned, enough for a task prompt, a condition of
up to ``context_length`` ids and a target. Built from ``torch.nn.TransformerDecoderLayer`` (pre-norm,
no dropout).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from siglip_lightning.towers.layers import LayerNorm


class CaptionDecoder(nn.Module):
    """Text decoder over image tokens.

    Args:
        vocab_size: text vocabulary (output logits).
        context_length: longest target sequence.
        width: decoder width.
        layers: decoder blocks.
        heads: attention heads.
        image_width: width of the image tokens (projected to ``width``).
        mlp_ratio: MLP hidden size as a multiple of ``width``.
        box_bins: quantisation steps of a box coordinate (coordinate tokens).
    """

    def __init__(self, vocab_size: int, context_length: int, width: int, layers: int, heads: int, image_width: int,
                 mlp_ratio: float = 4.0, box_bins: int = 100) -> None:
        super().__init__()
        self.vocab_size, self.context_length, self.box_bins = vocab_size, context_length, box_bins
        self.box_id = vocab_size  # coordinate bin k is id box_id + k
        self.bos_id, self.mask_id, self.ref_id, self.gnd_id = (vocab_size + box_bins + i for i in range(4))
        self.token_embedding = nn.Embedding(vocab_size + box_bins + 4, width)
        # the longest sequence: a task prompt, a caption (context_length) and a box (BOS + 4 coordinates)
        self.positional_embedding = nn.Parameter(torch.randn(context_length + 5, width) * 0.01)
        self.image_proj = nn.Linear(image_width, width)
        layer = nn.TransformerDecoderLayer(width, heads, int(width * mlp_ratio), dropout=0.0,
                                           activation=nn.GELU(approximate="tanh"), batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(layer, layers)
        self.norm = LayerNorm(width)
        self.head = nn.Linear(width, vocab_size + box_bins)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def hidden(self, inputs: torch.Tensor, image_tokens: torch.Tensor, image_padding: Optional[torch.Tensor],
               causal: bool) -> torch.Tensor:
        """Final hidden states ``[b, L, width]`` of input ids ``[b, L]`` given the image tokens."""
        length = inputs.shape[1]
        x = self.token_embedding(inputs) + self.positional_embedding[:length]
        memory = self.image_proj(image_tokens.to(x.dtype))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=x.device, dtype=x.dtype) if causal else None
        x = self.blocks(x, memory, tgt_mask=mask, tgt_is_causal=causal, memory_key_padding_mask=image_padding)
        return self.norm(x)

    def token_losses(self, hidden: torch.Tensor, targets: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
        """Cross-entropy of each position ``[b, L]`` (float32). ``chunk``: compute the logits that many
        positions at a time, recomputed in backward (a 256k vocabulary's logits never all exist at once)."""
        flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)

        def piece(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            logits = self.head(h)  # at least float32 under bf16
            return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), t, reduction="none")

        if chunk is None or flat_hidden.shape[0] <= chunk:
            losses = piece(flat_hidden, flat_targets)
        else:
            losses = torch.cat([checkpoint(piece, flat_hidden[i:i + chunk], flat_targets[i:i + chunk], use_reentrant=False)
                                for i in range(0, flat_hidden.shape[0], chunk)])
        return losses.reshape(targets.shape)
