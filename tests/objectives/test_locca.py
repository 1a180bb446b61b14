"""LocCa captioning: decoding targets and masks of both modes, and the loss against a float64 formula."""
from __future__ import annotations

import pytest
import torch

from siglip_lightning.objectives.context import StepContext
from siglip_lightning.objectives.locca import decoder_inputs, target_mask
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
    parallel = locca.parallel_rows(context, 6)
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
