"""SigLIP 2's NaFlex image tower: one ViT for any aspect ratio and any number of patches.

Laid out as Hugging Face's ``Siglip2VisionModel`` (so it exports to and imports from it): a linear
patch embedding of the flattened ``p x p x 3`` patch, a learned ``g x g`` position grid that is
resized to each image's own patch grid ``(h, w)`` (bilinear, antialiased, ``align_corners=False``,
as ``transformers`` does), the open_clip transformer blocks of :class:`~siglip_lightning.towers.VisionTower`,
a final LayerNorm and the MAP head. Padding patches are masked out as keys in every attention layer
and in the MAP head, so an image's embedding is the same alone or padded in a batch.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Optional, Tuple

import torch
from open_clip.transformer import Transformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from siglip_lightning.towers.layers import GELUTanh, LayerNorm, MAPHead, use_fused_attention
from siglip_lightning.towers.patches import PatchBatch, as_patch_batch


def antialiased_weights(size_in: int, size_out: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``[size_out, size_in]`` weights of antialiased linear resizing with ``align_corners=False``.

    The triangle filter widened by the scale when shrinking, normalised per output (PIL's, and
    ``F.interpolate(mode="bilinear", antialias=True)``'s, rule).
    """
    scale = size_in / size_out
    support = max(scale, 1.0)
    centers = (torch.arange(size_out, dtype=dtype, device=device) + 0.5) * scale - 0.5
    source = torch.arange(size_in, dtype=dtype, device=device)
    weights = (1 - (source[None, :] - centers[:, None]).abs() / support).clamp(min=0)
    return weights / weights.sum(1, keepdim=True)


def resize_position_grid(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[g, g, d]`` learned positions -> ``[height * width, d]`` for one image's patch grid (row-major).

    Bilinear with antialiasing, ``align_corners=False``, as ``transformers`` resizes them. Written as two
    small weight matrices rather than ``F.interpolate(..., antialias=True)``: torch 2.14's joint 2-D
    antialiased kernel gives wrong values when one output side is 1 and the other changes too
    (e.g. 4x4 -> 2x1), which NaFlex grids of thin images hit.
    """
    work = grid if grid.dtype in (torch.float32, torch.float64) else grid.float()
    rows = antialiased_weights(grid.shape[0], height, work.dtype, grid.device)
    cols = antialiased_weights(grid.shape[1], width, work.dtype, grid.device)
    resized = torch.einsum("hi,wj,ijd->hwd", rows, cols, work)
    return resized.reshape(height * width, -1).to(grid.dtype)


class NaFlexVisionTower(nn.Module):
    """A NaFlex ViT: takes a :class:`~siglip_lightning.towers.patches.PatchBatch` (set ``data.naflex``).

    Args:
        patch_size: patch side in pixels (the data pipeline cuts patches of this size).
        width: transformer width.
        layers: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden size as a multiple of ``width``.
        position_grid: side g of the learned g x g position-embedding grid (16 in the released
            models, whose ``num_patches`` is 256); it is resized to each image's patch grid.
        output_dim: embedding size; ``None`` keeps ``width`` (no projection, as in SigLIP 2).
        norm_eps: LayerNorm epsilon (1e-5 as torch; released SigLIP 2 checkpoints use 1e-6).
        grad_checkpointing: recompute block activations in backward (less memory, ~30% more compute).
    """

    def __init__(
        self,
        patch_size: int = 8,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        position_grid: int = 8,
        output_dim: Optional[int] = None,
        norm_eps: float = 1e-5,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.patch_size, self.width, self.grid_size = patch_size, width, position_grid
        self.output_dim = output_dim or width
        self.pool_type = "map"
        self.patch_embed = nn.Linear(3 * patch_size * patch_size, width)
        self.pos_grid = nn.Parameter(torch.randn(position_grid, position_grid, width) * width**-0.5)
        norm = partial(LayerNorm, eps=norm_eps)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, act_layer=GELUTanh, norm_layer=norm)
        use_fused_attention(self.transformer)
        self.grad_checkpointing = grad_checkpointing
        self.norm = norm(width)
        self.head = MAPHead(width, heads, mlp_ratio, norm_eps)
        self.proj = nn.Linear(width, self.output_dim) if self.output_dim != width else None

    def positions(self, spatial_shapes: torch.Tensor, length: int) -> torch.Tensor:
        """``[b, length, width]``: each image's resized grid, zeros on padding (computed once per shape)."""
        out = self.pos_grid.new_zeros(spatial_shapes.shape[0], length, self.width)
        shapes = [tuple(int(v) for v in row) for row in spatial_shapes.tolist()]
        for shape in set(shapes):
            resized = resize_position_grid(self.pos_grid, *shape)
            rows = [i for i, s in enumerate(shapes) if s == shape]
            out[rows, :resized.shape[0]] = resized
        return out

    def _check(self, batch: PatchBatch) -> None:
        want = 3 * self.patch_size**2
        if batch.patches.dim() != 3 or batch.patches.shape[-1] != want:
            raise ValueError(f"NaFlexVisionTower (patch_size {self.patch_size}) expects patches [b, L, {want}], got "
                             f"{tuple(batch.patches.shape)}: set data.naflex.patch_size to the tower's patch_size")
        counts = batch.spatial_shapes.prod(-1)
        if (counts > batch.patches.shape[1]).any() or not torch.equal(counts.to(batch.mask.device),
                                                                       batch.mask.sum(1)):
            raise ValueError("NaFlex batch: each image's mask must mark exactly h * w leading patches of its "
                             "spatial_shapes (h, w)")

    def _block(self, block: nn.Module, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        # open_clip's ResidualAttentionBlock.forward, with padded keys masked out
        y = block.ln_1(x)
        x = x + block.ls_1(block.attn(y, y, y, key_padding_mask=padding, need_weights=False)[0])
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    num_prefix_tokens = 0

    def forward(self, images: Any) -> torch.Tensor:
        return self.pool(*self.forward_tokens(images))

    def forward_tokens(self, images: Any, patch_mask: Optional[torch.Tensor] = None,
                       mask_token: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Un-pooled tokens ``[b, L, width]`` after the final norm, and the padding mask ``[b, L]`` (True = pad).

        ``patch_mask`` (bool ``[b, L]``) replaces those patch embeddings by ``mask_token`` (``[width]``)
        before the position embeddings are added.
        """
        batch = as_patch_batch(images)
        self._check(batch)
        patches = batch.patches.to(self.patch_embed.weight.dtype)
        x = self.patch_embed(patches)
        if patch_mask is not None:
            x = torch.where(patch_mask[..., None], mask_token.to(x.dtype), x)
        x = x + self.positions(batch.spatial_shapes, patches.shape[1])
        padding = ~batch.mask.to(x.device)
        for block in self.transformer.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._block, block, x, padding, use_reentrant=False)
            else:
                x = self._block(block, x, padding)
        return self.norm(x), padding

    def pool(self, tokens: torch.Tensor, padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The embedding ``[b, output_dim]`` of :meth:`forward_tokens`' tokens, padding masked out."""
        pooled = self.head(tokens, key_padding_mask=padding)
        return self.proj(pooled) if self.proj is not None else pooled
