"""LocCa captioning (Wan et al. 2024), as SigLIP 2 trains it beside the sigmoid loss from the start.

A decoder with half the text encoder's layers reads the un-pooled patch tokens of the image tower
(the same forward pass as the sigmoid loss: the un-augmented image) and predicts the caption's ids.
Each example is decoded one of two ways, chosen at random per example (``parallel_fraction``):

- autoregressive (teacher forcing): inputs ``[BOS, y_1, ..., y_{L-1}]``, causal self-attention;
- parallel prediction: inputs ``[MASK] * L``, no causal mask (every target predicted at once).

Targets are the caption ids ``y``; padding is ignored (with pad = EOS, the first EOS is kept as a
target and the rest ignored). Per example i: l_i = mean over its kept positions of -log p(y_ij).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import nn

from siglip_lightning.objectives.base import Objective
from siglip_lightning.objectives.context import StepContext
from siglip_lightning.objectives.decoder import CaptionDecoder
from siglip_lightning.objectives.views import view_generator
from siglip_lightning.towers.locked import unwrap


def target_mask(ids: torch.Tensor, pad_id: int, eos_id: int) -> torch.Tensor:
    """Bool ``[b, L]``: positions that are targets (not padding; the first EOS counts when pad = EOS)."""
    keep = ids != pad_id
    if pad_id == eos_id:
        is_eos = ids == eos_id
        first = is_eos & (is_eos.cumsum(1) == 1)
        keep = keep | first
    return keep


def decoder_inputs(ids: torch.Tensor, parallel: bool, bos_id: int, mask_id: int) -> Tuple[torch.Tensor, bool]:
    """(input ids, causal?) of teacher-forced (shifted right after BOS) or parallel (all MASK) decoding."""
    if parallel:
        return torch.full_like(ids, mask_id), False
    return torch.cat([torch.full_like(ids[:, :1], bos_id), ids[:, :-1]], dim=1), True


class LocCaCaptioning(Objective):
    """LocCa's captioning objective: a small decoder over the patch tokens predicts the caption.

    Args:
        weight: loss weight (SigLIP 2: 1.0, equal to the sigmoid loss).
        start: fraction of training at which it starts (SigLIP 2: from the start, 0.0).
        stop: fraction at which it stops.
        parallel_fraction: share of examples decoded by parallel prediction (SigLIP 2: 0.5).
        layers: decoder blocks; ``None``: half the text tower's.
        width: decoder width; ``None``: the text tower's.
        heads: attention heads; ``None``: the text tower's.
        pad_id: padding id of the captions; ``None``: the data's tokenizer's (at setup).
        eos_id: end id of the captions; ``None``: the data's tokenizer's.
        loss_chunk: compute the vocabulary logits this many positions at a time (for a 256k
            vocabulary; recomputed in backward); ``None``: all at once.
    """

    name = "locca"

    def __init__(self, weight: float = 1.0, start: float = 0.0, stop: float = 1.0, parallel_fraction: float = 0.5,
                 layers: Optional[int] = None, width: Optional[int] = None, heads: Optional[int] = None,
                 pad_id: Optional[int] = None, eos_id: Optional[int] = None, loss_chunk: Optional[int] = None) -> None:
        super().__init__(weight, start, stop)
        self.parallel_fraction, self.layers, self.width, self.heads = parallel_fraction, layers, width, heads
        self.pad_id, self.eos_id, self.loss_chunk = pad_id, eos_id, loss_chunk
        self.decoder: nn.Module = nn.Identity()

    def build(self, image_tower: nn.Module, text_tower: nn.Module) -> None:
        text, image = unwrap(text_tower), unwrap(image_tower)
        blocks = text.transformer.resblocks
        self.decoder = CaptionDecoder(
            vocab_size=text.vocab_size, context_length=text.context_length,
            width=self.width or text.transformer.width, layers=self.layers or max(1, len(blocks) // 2),
            heads=self.heads or blocks[0].attn.num_heads, image_width=image.width)

    def configure(self, datamodule: Any) -> None:
        tokenizer = getattr(datamodule, "tokenizer", None)
        if self.pad_id is None:
            self.pad_id = getattr(tokenizer, "pad_id", 0)
        if self.eos_id is None:
            self.eos_id = getattr(tokenizer, "eos_id", self.pad_id)

    def parallel_rows(self, context: StepContext, rows: int) -> torch.Tensor:
        """Bool ``[rows]``: which examples are decoded in parallel this step (seeded by step and rank)."""
        generator = view_generator(context.step, context.rank, 3)
        return torch.rand(rows, generator=generator) < self.parallel_fraction

    def example_losses(self, tokens: torch.Tensor, padding: Optional[torch.Tensor], ids: torch.Tensor,
                       parallel: bool) -> torch.Tensor:
        """Per-example mean cross-entropy ``[b]`` of one decoding mode."""
        inputs, causal = decoder_inputs(ids, parallel, self.decoder.bos_id, self.decoder.mask_id)
        hidden = self.decoder.hidden(inputs, tokens, padding, causal)
        keep = target_mask(ids, self.pad_id if self.pad_id is not None else 0,
                           self.eos_id if self.eos_id is not None else 0)
        losses = self.decoder.token_losses(hidden, ids, self.loss_chunk) * keep
        return losses.sum(1) / keep.sum(1).clamp(min=1)

    def per_example(self, context: StepContext) -> torch.Tensor:
        tokens, padding = context.tokens
        ids = context.text
        parallel = self.parallel_rows(context, ids.shape[0]).to(ids.device)
        out = torch.zeros(ids.shape[0], device=tokens.device, dtype=torch.promote_types(tokens.dtype, torch.float32))
        for mode in (True, False):  # one decoder pass per mode: the two need different self-attention masks
            rows = parallel == mode
            if rows.any():
                pad = None if padding is None else padding[rows]
                out = out.index_put((rows.nonzero()[:, 0],), self.example_losses(tokens[rows], pad, ids[rows], mode))
        return out
