"""FLOPs of a step: torch's ``FlopCounterMode`` (matrix products, convolutions, attention), with the
CPU attention kernels counted as the CUDA ones are.

On a GPU ``scaled_dot_product_attention`` runs a flash / memory-efficient / cuDNN kernel, each counted
by torch's formula; on a CPU it runs ``_scaled_dot_product_flash_attention_for_cpu``, which torch's
counter skips. The planner runs on CPU fake tensors but plans for GPUs, so both of its kernels get
the same formulas here (and a CPU measurement of a real step uses the same counter). The in-place
``addmm_`` that the tiled and ring sigmoid losses write their logits and gradients with is counted
as ``addmm`` is (torch's counter has no entry for it). Only the total is kept (no per-module table).
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, mm_flop, sdpa_backward_flop_count, sdpa_flop_count

from siglip_lightning import _compat


def _attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _addmm(bias, left, right, *args, out_shape=None, **kwargs) -> int:
    return mm_flop(left, right)


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts CPU attention (``get_total_flops()`` after use)."""
    forward, backward = _compat.cpu_attention_ops()
    counter = FlopCounterMode(display=False, custom_mapping={forward: _attention, backward: _attention_backward,
                                                            torch.ops.aten.addmm_: _addmm})
    return _compat.count_flops_globally(counter)
