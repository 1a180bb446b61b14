"""The text tower: a bidirectional open_clip ``TextTransformer`` that pools the last token (pad = EOS)
and projects with a biased linear head, as SigLIP's."""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from open_clip.transformer import TextTransformer

from siglip_lightning.towers.layers import BottleneckEmbedding, GELUTanh, LayerNorm, use_fused_attention


class TextTower(TextTransformer):
    """A text transformer that pools the last token (pad = EOS) and projects with a linear head.

    Args:
        vocab_size: tokenizer vocabulary size (must cover every id the tokenizer emits).
        context_length: tokens per caption (16 in the paper's ablations, 64 for released models).
        width: transformer width.
        layers: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden size as a multiple of ``width``.
        output_dim: embedding size; must equal the image tower's.
        causal_mask: use a causal attention mask (CLIP); SigLIP's text tower is bidirectional.
        embedding_dim: bottleneck K of the token embedding: an N x K table then a K x width
            projection (mSigLIP's 250k vocabulary uses K = 96); ``None`` is a plain N x width table.
        norm_eps: LayerNorm epsilon (1e-5 as torch; released SigLIP checkpoints use 1e-6).
        grad_checkpointing: recompute block activations in backward (less memory, ~30% more compute).
    """

    def __init__(
        self,
        vocab_size: int = 1024,
        context_length: int = 16,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        output_dim: int = 64,
        causal_mask: bool = False,
        embedding_dim: Optional[int] = None,
        norm_eps: float = 1e-5,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__(
            context_length=context_length,
            vocab_size=vocab_size,
            width=width,
            heads=heads,
            layers=layers,
            mlp_ratio=mlp_ratio,
            output_dim=output_dim,
            no_causal_mask=not causal_mask,
            pool_type="last",
            proj_type="linear",
            proj_bias=True,
            act_layer=GELUTanh,
            norm_layer=partial(LayerNorm, eps=norm_eps),
        )
        self.transformer.grad_checkpointing = grad_checkpointing
        use_fused_attention(self.transformer)
        if embedding_dim is not None:
            self.token_embedding = BottleneckEmbedding(vocab_size, embedding_dim, width)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        if text.shape[-1] != self.context_length:
            raise ValueError(
                f"TextTower expects {self.context_length} tokens per caption, got {text.shape[-1]}: "
                "set data.context_length to the tower's context_length"
            )
        return super().forward(text)
