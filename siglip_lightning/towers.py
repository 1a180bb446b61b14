"""Image and text towers built from open_clip's transformer blocks.

The layout follows SigLIP (big_vision) and Hugging Face's ``SiglipModel`` so that a trained model can
be exported: the ViT has a biased patch embedding, learned position embeddings, no class token
unless token pooling asks for one, a final LayerNorm and a MAP (attention-pooling) head; the text
tower is bidirectional, pools the last token (pad = EOS) and projects with a biased linear head.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from open_clip.transformer import LayerNorm, TextTransformer, Transformer
from torch import nn

from siglip_lightning.attention import FusedMultiheadAttention


class GELUTanh(nn.GELU):
    """The tanh approximation of GELU that SigLIP uses (``gelu_pytorch_tanh`` in transformers)."""

    def __init__(self) -> None:
        super().__init__(approximate="tanh")


def use_fused_attention(transformer: Transformer) -> None:
    """Give open_clip's blocks the leaner attention forward (same weights; see siglip_lightning.attention)."""
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

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(tokens.shape[0], -1, -1)
        pooled = self.attention(probe, tokens, tokens, need_weights=False)[0]
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


class VisionTower(nn.Module):
    """A ViT image tower of any size.

    Args:
        image_size: input resolution in pixels (square).
        patch_size: patch side in pixels; ``image_size`` must be a multiple of it.
        width: transformer width.
        layers: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden size as a multiple of ``width``.
        pool_type: ``map`` (SigLIP's attention pooling), ``tok`` (class token) or ``avg``.
        output_dim: embedding size; ``None`` keeps ``width`` (no projection, as in SigLIP).
        norm_eps: LayerNorm epsilon (1e-5 as torch; released SigLIP checkpoints use 1e-6).
        grad_checkpointing: recompute block activations in backward (less memory, ~30% more compute).
    """

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 8,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        pool_type: str = "map",
        output_dim: Optional[int] = None,
        norm_eps: float = 1e-5,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if pool_type not in ("map", "tok", "avg"):
            raise ValueError(f"pool_type must be 'map', 'tok' or 'avg', got {pool_type!r}")
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size, self.pool_type = image_size, patch_size, pool_type
        self.grid_size = image_size // patch_size
        self.width = width
        self.output_dim = output_dim or width
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        num_tokens = self.grid_size**2 + (1 if pool_type == "tok" else 0)
        self.class_token = nn.Parameter(torch.zeros(1, 1, width)) if pool_type == "tok" else None
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, width) * width**-0.5)
        norm = partial(LayerNorm, eps=norm_eps)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, act_layer=GELUTanh, norm_layer=norm)
        self.transformer.grad_checkpointing = grad_checkpointing
        use_fused_attention(self.transformer)
        self.norm = norm(width)
        self.head = MAPHead(width, heads, mlp_ratio, norm_eps) if pool_type == "map" else None
        self.proj = nn.Linear(width, self.output_dim) if self.output_dim != width else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(
                f"VisionTower expects {self.image_size}x{self.image_size} images, got "
                f"{tuple(images.shape[-2:])}: set data.image_size to the tower's image_size"
            )
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # [b, grid^2, width]
        if self.class_token is not None:
            x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.transformer(x + self.pos_embed))
        if self.pool_type == "map":
            pooled = self.head(x)
        elif self.pool_type == "tok":
            pooled = x[:, 0]
        else:
            pooled = x.mean(dim=1)
        return self.proj(pooled) if self.proj is not None else pooled


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
