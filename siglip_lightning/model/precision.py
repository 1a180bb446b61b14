"""Keep t', b and the LayerNorm parameters in float32 whatever precision the run stores weights in.

Under ``precision: bf16-true`` (or 16-true, or XLA's bf16) Lightning converts the whole module with
``module.to(dtype)``. bfloat16 cannot hold t' = log 10 (it rounds to 2.296875), and near b = -10 its
spacing is 0.0625, so AdamW steps of ~1e-3 round away: t' and b would never move, nor would
LayerNorm gains near 1.0 (spacing 0.0078). The module's ``to`` / ``half`` / ``bfloat16`` call
:func:`keep_float32` around the conversion so that those parameters keep their float32 values
(moved to the new device). The norms compute in at least float32 (``towers/layers.LayerNorm``), and t' and b enter the
losses as 0-dim tensors, which do not change the dtype of the bfloat16 logits.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator

import torch
from torch import nn

LOW_PRECISION = (torch.float16, torch.bfloat16)


def float32_parameters(module: nn.Module) -> Dict[str, nn.Parameter]:
    """t', b and every LayerNorm weight and bias of ``module``, by name."""
    keep = {name: p for name, p in module.named_parameters() if name in ("logit_scale", "logit_bias")}
    for prefix, sub in module.named_modules():
        if isinstance(sub, nn.LayerNorm):
            for name, param in sub.named_parameters(recurse=False):
                keep[f"{prefix}.{name}" if prefix else name] = param
    return keep


@contextlib.contextmanager
def keep_float32(module: nn.Module) -> Iterator[None]:
    """Around a dtype conversion of ``module``: the float32 parameters above stay float32."""
    before = {name: p.data for name, p in float32_parameters(module).items() if p.dtype == torch.float32}
    yield
    for name, param in float32_parameters(module).items():
        if name in before and param.dtype in LOW_PRECISION:
            param.data = before[name].to(device=param.device)
