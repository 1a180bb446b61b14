"""FusedMultiheadAttention must equal nn.MultiheadAttention (values and gradients) on every path it takes."""
import copy

import pytest
import torch
from torch import nn

from siglip_lightning.towers.attention import FusedMultiheadAttention
from siglip_lightning.towers import TextTower, VisionTower


def _pair(width=32, heads=4, bias=True):
    torch.manual_seed(0)
    stock = nn.MultiheadAttention(width, heads, batch_first=True, bias=bias).double()
    fused = FusedMultiheadAttention.adopt(copy.deepcopy(stock))
    return stock, fused


@pytest.mark.parametrize("bias", [True, False])
def test_self_attention_matches_stock(bias):
    stock, fused = _pair(bias=bias)
    x = torch.randn(5, 7, 32, dtype=torch.float64)
    x_stock = x.clone().requires_grad_(True)
    x_fused = x.clone().requires_grad_(True)
    out_stock = stock(x_stock, x_stock, x_stock, need_weights=False)[0]
    out_fused = fused(x_fused, x_fused, x_fused, need_weights=False)[0]
    torch.testing.assert_close(out_fused, out_stock)
    weight = torch.randn_like(out_stock)
    (out_stock * weight).sum().backward()
    (out_fused * weight).sum().backward()
    torch.testing.assert_close(x_fused.grad, x_stock.grad)
    for (name, p_stock), p_fused in zip(stock.named_parameters(), fused.parameters()):
        torch.testing.assert_close(p_fused.grad, p_stock.grad, msg=name)


def test_cross_attention_and_float_mask_match_stock():
    stock, fused = _pair()
    probe = torch.randn(4, 1, 32, dtype=torch.float64)
    tokens = torch.randn(4, 9, 32, dtype=torch.float64)
    torch.testing.assert_close(fused(probe, tokens, tokens, need_weights=False)[0],
                               stock(probe, tokens, tokens, need_weights=False)[0])
    x = torch.randn(3, 6, 32, dtype=torch.float64)
    causal = torch.full((6, 6), float("-inf"), dtype=torch.float64).triu(1)
    torch.testing.assert_close(fused(x, x, x, need_weights=False, attn_mask=causal)[0],
                               stock(x, x, x, need_weights=False, attn_mask=causal)[0])


def test_unsupported_calls_fall_back_to_stock():
    stock, fused = _pair()
    x = torch.randn(3, 6, 32, dtype=torch.float64)
    blocked = torch.ones(6, 6, dtype=torch.bool).triu(1)  # bool: True = may NOT attend (the reverse of SDPA)
    torch.testing.assert_close(fused(x, x, x, need_weights=False, attn_mask=blocked)[0],
                               stock(x, x, x, need_weights=False, attn_mask=blocked)[0])
    out, weights = fused(x, x, x, need_weights=True)
    assert weights is not None and weights.shape == (3, 6, 6)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[:, -2:] = True
    torch.testing.assert_close(fused(x, x, x, need_weights=False, key_padding_mask=padding)[0],
                               stock(x, x, x, need_weights=False, key_padding_mask=padding)[0])


def test_towers_use_it_and_keep_the_stock_state_dict_keys():
    vision, text = VisionTower(), TextTower(vocab_size=64)
    attentions = [m for m in [*vision.modules(), *text.modules()] if isinstance(m, nn.MultiheadAttention)]
    assert attentions and all(isinstance(m, FusedMultiheadAttention) for m in attentions)
    keys = set(vision.state_dict())
    assert "transformer.resblocks.0.attn.in_proj_weight" in keys and "head.attention.out_proj.weight" in keys

