"""LocCa captioning: decoding targets and masks of both modes, and the loss against a float64 formula."""
from __future__ import annotations

import pytest
import torch

from siglip_lightning.objectives.context import StepContext
from siglip_lightning.objectives.locca import (
    CAPTION_PARALLEL, GROUNDED, REFERRING, box_tokens, decoder_inputs, grounded_sequence, referring_sequence,
    target_mask,
)
from tests.objectives.helpers import random_batch, tiny_module


def test_teacher_forcing_shifts_right_and_parallel_masks_every_input():
    ids = torch.tensor([[5, 6, 7, 1, 0, 0], [8, 9, 1, 0, 0, 0]])
    inputs, causal = decoder_inputs(ids, parallel=False, bos_id=100, mask_id=101)
    assert causal and inputs.tolist() == [[100, 5, 6, 7, 1, 0], [100, 8, 9, 1, 0, 0]]
    inputs, causal = decoder_inputs(ids, parallel=True, bos_id=100, mask_id=101)
    assert not causal and (inputs == 101).all()


def test_targets_ignore_padding_and_keep_the_first_eos_when_pad_is_eos():
    gemma = torch.tensor([[5, 6, 1, 0, 0]])  # pad 0, EOS 1
    assert target_mask(gemma, pad_id=0, eos_id=1).tolist() == [[True, True, True, False, False]]
    siglip = torch.tensor([[5, 6, 1, 1, 1]])  # pad = EOS = 1
    assert target_mask(siglip, pad_id=1, eos_id=1).tolist() == [[True, True, True, False, False]]


@pytest.mark.parametrize("parallel", [False, True])
def test_autoregressive_decoding_is_causal_and_parallel_sees_no_targets(parallel):
    module = tiny_module().double()
    locca = module.objectives[0]
    batch = random_batch(2)
    tokens, padding = module.image_tower.forward_tokens(batch["image"].double())
    ids = batch["text"]
    changed = ids.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 60 + 2  # another word at position 4
    outs = []
    for y in (ids, changed):
        inputs, causal = decoder_inputs(y, parallel, locca.decoder.bos_id, locca.decoder.mask_id)
        outs.append(locca.decoder.hidden(inputs, tokens, padding, causal))
    if parallel:  # inputs are all MASK: the targets never reach the decoder
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    else:  # teacher forcing: y_4 is the input of position 5 and reaches positions 5.. only
        torch.testing.assert_close(outs[0][:, :5], outs[1][:, :5], rtol=0, atol=1e-12)
        assert (outs[0][:, 5:] - outs[1][:, 5:]).abs().max() > 1e-6


def test_per_example_loss_matches_float64_formula_and_chunking():
    module = tiny_module().double()
    locca = module.objectives[0]
    batch = random_batch(6)
    batch["image"] = batch["image"].double()
    context = StepContext(module.image_tower, batch, step=3, rank=0)
    got = locca.per_example(context)
    parallel = locca.tasks(context, 6) == CAPTION_PARALLEL
    assert 0 < int(parallel.sum()) < 6  # this draw holds both modes
    tokens, _ = module.image_tower.forward_tokens(batch["image"])
    ids = batch["text"]
    for i in range(6):
        y = ids[i:i + 1]
        inputs, causal = decoder_inputs(y, bool(parallel[i]), locca.decoder.bos_id, locca.decoder.mask_id)
        logits = locca.decoder.head(locca.decoder.hidden(inputs, tokens[i:i + 1], None, causal))[0]  # [L, V]
        log_p = logits - logits.exp().sum(-1, keepdim=True).log()
        kept = [j for j in range(y.shape[1]) if y[0, j] != 0]  # Gemma ids: pad 0 ignored, EOS 1 kept
        expected = -sum(log_p[j, y[0, j]] for j in kept) / len(kept)
        assert float(got[i].detach()) == pytest.approx(float(expected.detach()), rel=1e-9)
    locca.loss_chunk = 5  # logits 5 positions at a time, recomputed in backward: same loss and gradient
    grads = []
    for chunk in (None, 5):
        locca.loss_chunk = chunk
        module.zero_grad()
        loss = locca.per_example(StepContext(module.image_tower, batch, step=3, rank=0)).sum()
        loss.backward()
        grads.append((float(loss), locca.decoder.head.weight.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_referring_and_grounded_sequences_put_targets_after_their_condition():
    caption = torch.tensor([[5, 6, 1, 0]])  # L = 4
    box = box_tokens(torch.tensor([[0.0, 0.25, 0.5, 0.999]]), first_id=64, bins=10)
    assert box.tolist() == [[64, 66, 69, 73]]
    inputs, targets, keep = referring_sequence(caption, box, ref_id=90, bos_id=80)
    assert inputs.tolist() == [[90, 5, 6, 1, 0, 80, 64, 66, 69]]  # [REF, c, BOS, q1..q3]
    assert [t for t, k in zip(targets[0].tolist(), keep[0].tolist()) if k] == [64, 66, 69, 73]
    assert keep[0].tolist() == [False] * 5 + [True] * 4  # position i predicts targets[i] from inputs[..i]
    inputs, targets, keep = grounded_sequence(box, caption, target_mask(caption, 0, 1), gnd_id=91, bos_id=80)
    assert inputs.tolist() == [[91, 64, 66, 69, 73, 80, 5, 6, 1]]  # [GND, q1..q4, BOS, c1..c3]
    assert [t for t, k in zip(targets[0].tolist(), keep[0].tolist()) if k] == [5, 6, 1]  # pad ignored


def test_region_tasks_loss_matches_float64_formula():
    module = tiny_module().double()
    locca = module.objectives[0]
    locca.referring_fraction, locca.grounded_fraction = 0.5, 0.5
    batch = random_batch(8)
    batch["image"] = batch["image"].double()
    gen = torch.Generator().manual_seed(5)
    corner = torch.rand(8, 2, generator=gen) * 0.5
    batch["region_box"] = torch.cat([corner, corner + 0.4], dim=1)
    batch["region_text"] = random_batch(8, seed=9)["text"]
    batch["has_region"] = torch.tensor([True] * 6 + [False] * 2)
    context = StepContext(module.image_tower, batch, step=1, rank=0)
    got = locca.per_example(context)
    task = locca.tasks(context, 8)
    assert (task[6:] < REFERRING).all() and {REFERRING, GROUNDED} <= set(task[:6].tolist())
    tokens, _ = module.image_tower.forward_tokens(batch["image"])
    d = locca.decoder
    for i in range(8):
        if task[i] < REFERRING:
            continue
        q = [d.box_id + min(int(v * d.box_bins), d.box_bins - 1) for v in batch["region_box"][i].tolist()]
        c = batch["region_text"][i].tolist()
        if task[i] == REFERRING:
            seq, targets = [d.ref_id, *c, d.bos_id, *q[:3]], [None] * (len(c) + 1) + q
        else:
            kept = c[:c.index(1) + 1]  # Gemma ids: up to EOS
            seq = [d.gnd_id, *q, d.bos_id, *c[:-1]]
            targets = [None] * 5 + kept + [None] * (len(c) - len(kept))
        logits = d.head(d.hidden(torch.tensor([seq]), tokens[i:i + 1], None, True))[0]
        log_p = logits - logits.exp().sum(-1, keepdim=True).log()
        terms = [-log_p[j, t] for j, t in enumerate(targets) if t is not None]
        assert float(got[i].detach()) == pytest.approx(float(sum(terms).detach()) / len(terms), rel=1e-9)
    boxes = locca.predict_boxes(tokens[:2], None, batch["region_text"][:2])
    assert boxes.shape == (2, 4) and ((boxes > 0) & (boxes < 1)).all()


def test_referring_accuracy_counts_boxes_with_iou_above_half(monkeypatch):
    from siglip_lightning.objectives.referring import referring_hits

    module = tiny_module()
    locca = module.objectives[0]
    batch = random_batch(4)
    batch["region_text"] = batch["text"]
    batch["has_region"] = torch.tensor([True, True, True, False])
    predicted = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6], [0.0, 0.0, 0.4, 0.4]])
    seen = []
    monkeypatch.setattr(locca, "predict_boxes", lambda tokens, padding, captions: seen.append(captions) or predicted)
    batch["region_box"] = torch.tensor([[0.1, 0.1, 0.5, 0.5],    # IoU 1
                                        [0.2, 0.2, 0.6, 0.62],   # IoU 0.95
                                        [0.0, 0.0, 0.9, 0.4],    # IoU 0.44: a miss
                                        [0.1, 0.1, 0.5, 0.5]])   # no region: not scored
    hits, scored = referring_hits(locca, module.image_tower, batch).tolist()
    assert scored == 3 and hits == 2 and torch.equal(seen[0], batch["text"][:3])
