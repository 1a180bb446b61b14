"""Checks of option combinations that parse fine one by one but cannot work together."""
from __future__ import annotations

from typing import Any, Optional

from siglip_lightning.errors import UserInputError


def check_global_batch_size(global_batch_size: Optional[int], trainer: Any, datamodule: Any) -> None:
    """``global_batch_size`` (when set) must equal per-device batch x devices x nodes x accumulation.

    The per-device ``data.batch_size`` stays the one source of truth: ``global_batch_size`` is a
    check that a config meant for a given global batch still gets it on this machine, never a
    value that silently rewrites another one.
    """
    if global_batch_size is None:
        return
    if global_batch_size <= 0:
        raise UserInputError(f"global_batch_size must be positive, got {global_batch_size}")
    per_device = getattr(datamodule, "hparams", {}).get("batch_size") if datamodule is not None else None
    if per_device is None:
        return
    devices, nodes, accumulate = trainer.num_devices, trainer.num_nodes, trainer.accumulate_grad_batches
    per_step = devices * nodes * accumulate
    actual = per_device * per_step
    if actual == global_batch_size:
        return
    hint = (f"set data.batch_size={global_batch_size // per_step}" if global_batch_size % per_step == 0 else
            f"it is not a multiple of devices x num_nodes x accumulate_grad_batches = {per_step}: change "
            "global_batch_size or trainer.devices / trainer.num_nodes / trainer.accumulate_grad_batches")
    raise UserInputError(
        f"global_batch_size={global_batch_size} but data.batch_size ({per_device}) x trainer.devices ({devices}) x "
        f"trainer.num_nodes ({nodes}) x trainer.accumulate_grad_batches ({accumulate}) = {actual}: {hint}"
    )
