"""Shape readers and transformer-block key maps shared by the Hugging Face and open_clip converters.

Our blocks are open_clip ``ResidualAttentionBlock``s (``ln_1``, packed ``attn.in_proj``,
``ln_2``, ``mlp.c_fc``/``c_proj``); other layouts name the same tensors differently, and some split
the packed q/k/v projection into three matrices.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

from siglip_lightning.errors import UserInputError
from siglip_lightning.towers import BottleneckEmbedding, TextTower, VisionTower

# (ours, theirs) suffixes inside one block, for the Hugging Face and timm layouts.
HF_BLOCK = [("ln_1", "layer_norm1"), ("attn.out_proj", "self_attn.out_proj"), ("ln_2", "layer_norm2"),
            ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]
TIMM_BLOCK = [("ln_1", "norm1"), ("attn.in_proj", "attn.qkv"), ("attn.out_proj", "attn.proj"), ("ln_2", "norm2"),
              ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]


def linear_pairs(ours: str, theirs: str) -> List[Tuple[str, str]]:
    """weight and bias keys of one Linear / LayerNorm renamed ``ours`` -> ``theirs``."""
    return [(f"{ours}.weight", f"{theirs}.weight"), (f"{ours}.bias", f"{theirs}.bias")]


def norm_eps(tower: nn.Module) -> float:
    """The epsilon shared by the tower's LayerNorms (export formats store one)."""
    eps = {m.eps for m in tower.modules() if isinstance(m, nn.LayerNorm)}
    if len(eps) != 1:
        raise UserInputError(f"the tower mixes LayerNorm epsilons {sorted(eps)}: cannot export one layer_norm_eps")
    return eps.pop()


def vision_shape(tower: VisionTower) -> Dict:
    """The constructor arguments of ``tower`` as far as an export needs them."""
    if not isinstance(tower, VisionTower):
        raise UserInputError(f"export needs a siglip_lightning VisionTower image tower, got {type(tower).__name__}")
    if tower.pool_type != "map" or tower.proj is not None:
        raise UserInputError(
            f"export needs SigLIP's image tower layout (pool_type='map', no output projection); this one has "
            f"pool_type={tower.pool_type!r}, output_dim={tower.output_dim} for width {tower.width}")
    block = tower.transformer.resblocks[0]
    return dict(image_size=tower.image_size, patch_size=tower.patch_size, width=tower.width,
                layers=len(tower.transformer.resblocks), heads=block.attn.num_heads,
                mlp_ratio=block.mlp.c_fc.out_features / tower.width, norm_eps=norm_eps(tower))


def text_shape(tower: TextTower) -> Dict:
    if not isinstance(tower, TextTower):
        raise UserInputError(f"export needs a siglip_lightning TextTower text tower, got {type(tower).__name__}")
    if tower.attn_mask is not None:
        raise UserInputError("export needs a bidirectional text tower (causal_mask=False), as SigLIP's")
    block = tower.transformer.resblocks[0]
    return dict(vocab_size=tower.vocab_size, context_length=tower.context_length, width=tower.width,
                layers=len(tower.transformer.resblocks), heads=block.attn.num_heads,
                mlp_ratio=block.mlp.c_fc.out_features / tower.width, output_dim=tower.output_dim,
                norm_eps=norm_eps(tower))


def dense_text_state(tower: TextTower) -> Dict[str, torch.Tensor]:
    """The text tower's state dict with a bottlenecked token embedding folded into one dense table.

    Formats without a bottleneck option get the exact equivalent N x W table (the map is linear).
    """
    state = {k: v.detach() for k, v in tower.state_dict().items()}
    if isinstance(tower.token_embedding, BottleneckEmbedding):
        for key in ("token_embedding.table.weight", "token_embedding.proj.weight"):
            state.pop(key)
        with torch.no_grad():
            state["token_embedding.weight"] = tower.token_embedding.weight.detach().clone()
    return state


def split_qkv(tensor: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(t.clone() for t in tensor.chunk(3, dim=0))


def load_exact(tower: nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``tower``, failing with the missing/unexpected keys named."""
    result = tower.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserInputError(
            f"the weights in {source} do not fit the tower: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}")
