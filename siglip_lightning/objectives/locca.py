"""LocCa (Wan et al. 2024) as SigLIP 2 trains it beside the sigmoid loss from the start.

A decoder with half the text encoder's layers reads the un-pooled patch tokens of the image tower
(the same forward pass as the sigmoid loss: the un-augmented image). Each example gets one task:

- captioning, decoded one of two ways (``parallel_fraction`` of them in parallel):
  autoregressive (teacher forcing): inputs ``[BOS, y_1 .. y_{L-1}]``, causal self-attention;
  parallel prediction: inputs ``[MASK] * L``, no causal mask (every target predicted at once);
- referring expression (``referring_fraction`` of the examples that have a region): inputs
  ``[REF, c_1 .. c_L, BOS, q_1, q_2, q_3]``, targets the box's four coordinate tokens q (the
  region's caption c -> its box), causal;
- grounded captioning (``grounded_fraction``): inputs ``[GND, q_1 .. q_4, BOS, c_1 .. c_{L-1}]``,
  targets the region's caption c (its box -> the caption), causal.

Coordinates are quantised to ``box_bins`` tokens. Padding is ignored (with pad = EOS, the first EOS is
kept as a target and the rest ignored). Per example i: l_i = mean over its targets of -log p(target).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import nn

from siglip_lightning.errors import UserInputError
from siglip_lightning.objectives.base import Objective
from siglip_lightning.objectives.context import StepContext
from siglip_lightning.objectives.decoder import CaptionDecoder
from siglip_lightning.objectives.views import view_generator
from siglip_lightning.towers.locked import unwrap

CAPTION_PARALLEL, CAPTION_AUTOREGRESSIVE, REFERRING, GROUNDED = range(4)


def target_mask(ids: torch.Tensor, pad_id: int, eos_id: int) -> torch.Tensor:
    """Bool ``[b, L]``: positions that are targets (not padding; the first EOS counts when pad = EOS)."""
    keep = ids != pad_id
    if pad_id == eos_id:
        is_eos = ids == eos_id
        keep = keep | (is_eos & (is_eos.cumsum(1) == 1))
    return keep


def decoder_inputs(ids: torch.Tensor, parallel: bool, bos_id: int, mask_id: int) -> Tuple[torch.Tensor, bool]:
    """(input ids, causal?) of teacher-forced (shifted right after BOS) or parallel (all MASK) captioning."""
    if parallel:
        return torch.full_like(ids, mask_id), False
    return torch.cat([torch.full_like(ids[:, :1], bos_id), ids[:, :-1]], dim=1), True


def box_tokens(boxes: torch.Tensor, first_id: int, bins: int) -> torch.Tensor:
    """``[b, 4]`` coordinates in [0, 1] -> their coordinate token ids (bin k of ``bins`` is ``first_id + k``)."""
    return first_id + (boxes * bins).floor().long().clamp(0, bins - 1)


def referring_sequence(caption: torch.Tensor, box: torch.Tensor, ref_id: int, bos_id: int):
    """(inputs, targets, keep) of caption -> box: ``[REF, c, BOS, q1, q2, q3]`` predicting q1..q4 at the end."""
    b, length = caption.shape
    inputs = torch.cat([torch.full_like(caption[:, :1], ref_id), caption, torch.full_like(caption[:, :1], bos_id),
                        box[:, :3]], dim=1)
    targets = torch.cat([torch.zeros_like(caption), torch.zeros_like(caption[:, :1]), box], dim=1)  # 0: not a target
    keep = torch.zeros_like(targets, dtype=torch.bool)
    keep[:, length + 1:] = True
    return inputs, targets, keep


def grounded_sequence(box: torch.Tensor, caption: torch.Tensor, caption_keep: torch.Tensor, gnd_id: int, bos_id: int):
    """(inputs, targets, keep) of box -> caption: ``[GND, q1..q4, BOS, c_1..c_{L-1}]`` predicting c_1..c_L."""
    prompt = torch.cat([torch.full_like(box[:, :1], gnd_id), box], dim=1)  # [b, 5]
    inputs = torch.cat([prompt, torch.full_like(box[:, :1], bos_id), caption[:, :-1]], dim=1)
    targets = torch.cat([torch.zeros_like(prompt), caption], dim=1)  # 0 under the prompt: not a target
    keep = torch.cat([torch.zeros_like(prompt, dtype=torch.bool), caption_keep], dim=1)
    return inputs, targets, keep


class LocCaCaptioning(Objective):
    """LocCa: a small decoder over the patch tokens captions the image, finds a region, or captions a box.

    Args:
        weight: loss weight (SigLIP 2: 1.0, equal to the sigmoid loss).
        start: fraction of training at which it starts (SigLIP 2: from the start, 0.0).
        stop: fraction at which it stops.
        parallel_fraction: share of captioning examples decoded by parallel prediction (SigLIP 2: 0.5).
        referring_fraction: share of the examples with a region (``data.regions_column``) given the
            referring-expression task (caption -> box).
        grounded_fraction: share of them given grounded captioning (box -> caption); the rest caption.
        box_bins: quantisation steps of a box coordinate.
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
                 referring_fraction: float = 0.0, grounded_fraction: float = 0.0, box_bins: int = 100,
                 layers: Optional[int] = None, width: Optional[int] = None, heads: Optional[int] = None,
                 pad_id: Optional[int] = None, eos_id: Optional[int] = None, loss_chunk: Optional[int] = None) -> None:
        super().__init__(weight, start, stop)
        if min(parallel_fraction, referring_fraction, grounded_fraction) < 0 or parallel_fraction > 1 \
                or referring_fraction + grounded_fraction > 1:
            raise UserInputError("LocCaCaptioning: fractions must be in [0, 1] and referring_fraction + "
                                 f"grounded_fraction <= 1; got {parallel_fraction}, {referring_fraction}, "
                                 f"{grounded_fraction}")
        self.parallel_fraction, self.referring_fraction = parallel_fraction, referring_fraction
        self.grounded_fraction, self.box_bins = grounded_fraction, box_bins
        self.layers, self.width, self.heads = layers, width, heads
        self.pad_id, self.eos_id, self.loss_chunk = pad_id, eos_id, loss_chunk
        self.decoder: nn.Module = nn.Identity()

    def build(self, image_tower: nn.Module, text_tower: nn.Module) -> None:
        text, image = unwrap(text_tower), unwrap(image_tower)
        blocks = text.transformer.resblocks
        self.decoder = CaptionDecoder(
            vocab_size=text.vocab_size, context_length=text.context_length,
            width=self.width or text.transformer.width, layers=self.layers or max(1, len(blocks) // 2),
            heads=self.heads or blocks[0].attn.num_heads, image_width=image.width, box_bins=self.box_bins)

    def configure(self, datamodule: Any) -> None:
        tokenizer = getattr(datamodule, "tokenizer", None)
        if self.pad_id is None:
            self.pad_id = getattr(tokenizer, "pad_id", 0)
        if self.eos_id is None:
            self.eos_id = getattr(tokenizer, "eos_id", self.pad_id)

    def keep(self, ids: torch.Tensor) -> torch.Tensor:
        pad = self.pad_id if self.pad_id is not None else 0
        return target_mask(ids, pad, self.eos_id if self.eos_id is not None else pad)

    def tasks(self, context: StepContext, rows: int) -> torch.Tensor:
        """``[rows]`` task of each example this step (seeded by step and rank; regions only where there is one)."""
        u = torch.rand(rows, 2, generator=view_generator(context.step, context.rank, 3))
        task = torch.where(u[:, 0] < self.parallel_fraction, CAPTION_PARALLEL, CAPTION_AUTOREGRESSIVE)
        has = context.batch.get("has_region")
        if has is not None:
            has = has.cpu()
            task = torch.where(has & (u[:, 1] < self.referring_fraction), REFERRING, task)
            task = torch.where(has & (u[:, 1] >= self.referring_fraction)
                               & (u[:, 1] < self.referring_fraction + self.grounded_fraction), GROUNDED, task)
        return task

    def sequences(self, task: int, batch: dict, rows: torch.Tensor):
        """(inputs, targets, keep, causal) of ``task`` for the examples ``rows``."""
        d = self.decoder
        if task in (CAPTION_PARALLEL, CAPTION_AUTOREGRESSIVE):
            ids = batch["text"][rows]
            inputs, causal = decoder_inputs(ids, task == CAPTION_PARALLEL, d.bos_id, d.mask_id)
            return inputs, ids, self.keep(ids), causal
        box = box_tokens(batch["region_box"][rows], d.box_id, d.box_bins)
        caption = batch["region_text"][rows]
        if task == REFERRING:
            return (*referring_sequence(caption, box, d.ref_id, d.bos_id), True)
        return (*grounded_sequence(box, caption, self.keep(caption), d.gnd_id, d.bos_id), True)

    def example_losses(self, tokens: torch.Tensor, padding: Optional[torch.Tensor], inputs: torch.Tensor,
                       targets: torch.Tensor, keep: torch.Tensor, causal: bool) -> torch.Tensor:
        """Per-example mean cross-entropy over the kept targets, ``[b]``."""
        hidden = self.decoder.hidden(inputs, tokens, padding, causal)
        losses = self.decoder.token_losses(hidden, targets, self.loss_chunk) * keep
        return losses.sum(1) / keep.sum(1).clamp(min=1)

    def per_example(self, context: StepContext) -> torch.Tensor:
        tokens, padding = context.tokens
        task = self.tasks(context, tokens.shape[0]).to(tokens.device)
        out = torch.zeros(tokens.shape[0], device=tokens.device, dtype=torch.promote_types(tokens.dtype, torch.float32))
        for kind in (CAPTION_PARALLEL, CAPTION_AUTOREGRESSIVE, REFERRING, GROUNDED):  # one decoder pass per task
            rows = (task == kind).nonzero()[:, 0]
            if rows.numel():
                pad = None if padding is None else padding[rows]
                losses = self.example_losses(tokens[rows], pad, *self.sequences(kind, context.batch, rows))
                out = out.index_put((rows,), losses)
        return out

    @torch.no_grad()
    def predict_boxes(self, tokens: torch.Tensor, padding: Optional[torch.Tensor], captions: torch.Tensor) -> torch.Tensor:
        """Greedy referring expressions: the ``[b, 4]`` box (bin centres, in [0, 1]) of each caption's region."""
        d = self.decoder
        empty = torch.zeros(captions.shape[0], 0, dtype=torch.long, device=captions.device)
        inputs, _, _ = referring_sequence(captions, empty, d.ref_id, d.bos_id)  # [REF, c, BOS]
        for _ in range(4):
            logits = d.head(d.hidden(inputs, tokens, padding, causal=True)[:, -1])[:, d.box_id:d.box_id + d.box_bins]
            inputs = torch.cat([inputs, d.box_id + logits.argmax(-1, keepdim=True)], dim=1)
        return (inputs[:, -4:] - d.box_id + 0.5).float() / d.box_bins
