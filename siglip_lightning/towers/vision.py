"""The ViT image tower, built from open_clip's transformer blocks.

The layout follows SigLIP (big_vision) and Hugging Face's ``SiglipModel`` so that a trained model can
be exported: a biased patch embedding, learned position embeddings, no class token unless token
pooling asks for one, a final LayerNorm and a MAP (attention-pooling) head.
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Tuple

import torch
from open_clip.transformer import Transformer
from torch import nn

from siglip_lightning.towers.layers import GELUTanh, LayerNorm, MAPHead, use_fused_attention
from siglip_lightning.towers.naflex import resize_position_grid


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

    #: leading tokens that are not patches (the class token of ``tok`` pooling)
    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.class_token is not None else 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(*self.forward_tokens(images))

    def forward_tokens(self, images: torch.Tensor, patch_mask: Optional[torch.Tensor] = None,
                       mask_token: Optional[torch.Tensor] = None, any_size: bool = False) -> Tuple[torch.Tensor, None]:
        """Un-pooled tokens ``[b, prefix + grid^2, width]`` after the final norm, and ``None`` (no padding).

        ``patch_mask`` (bool ``[b, grid^2]``) replaces those patch embeddings by ``mask_token``
        (``[width]``) before the position embeddings are added (masked prediction, TIPS / iBOT).
        ``any_size``: accept images of another size (a multiple of the patch), with the position grid
        resized to theirs (antialiased bilinear, as NaFlex): SILC's small local crops.
        """
        side = images.shape[-2:]
        if not any_size and (side[0] != self.image_size or side[1] != self.image_size):
            raise ValueError(
                f"VisionTower expects {self.image_size}x{self.image_size} images, got "
                f"{tuple(images.shape[-2:])}: set data.image_size to the tower's image_size"
            )
        if side[0] % self.patch_size or side[1] % self.patch_size:
            raise ValueError(f"image sides {tuple(side)} are not multiples of patch_size {self.patch_size}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # [b, grid^2, width]
        if patch_mask is not None:
            x = torch.where(patch_mask[..., None], mask_token.to(x.dtype), x)
        if self.class_token is not None:
            x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm(self.transformer(x + self.positions(side[0] // self.patch_size, side[1] // self.patch_size))), None

    def positions(self, rows: int, cols: int) -> torch.Tensor:
        """``[1, tokens, width]`` position embeddings of a ``rows x cols`` patch grid (the learned ones at its own)."""
        if rows == cols == self.grid_size:
            return self.pos_embed
        prefix = self.num_prefix_tokens
        grid = self.pos_embed[0, prefix:].reshape(self.grid_size, self.grid_size, -1)
        resized = resize_position_grid(grid, rows, cols)[None]
        return torch.cat([self.pos_embed[:, :prefix], resized], dim=1)

    def pool(self, tokens: torch.Tensor, padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The embedding ``[b, output_dim]`` of :meth:`forward_tokens`' tokens (``padding`` is unused here)."""
        if self.pool_type == "map":
            pooled = self.head(tokens)
        elif self.pool_type == "tok":
            pooled = tokens[:, 0]
        else:
            pooled = tokens.mean(dim=1)
        return self.proj(pooled) if self.proj is not None else pooled
