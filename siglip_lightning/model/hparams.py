"""Keep checkpoints loadable with ``torch.load(weights_only=True)`` when a module is built in Python.

Under LightningCLI, ``save_hyperparameters()`` records the config (``class_path`` dicts), which is
safe and lets ``load_from_checkpoint`` rebuild the towers. Built directly in Python, the same call
would pickle the tower objects themselves into the checkpoint, and such a checkpoint loads only
with ``weights_only=False`` (which can run code). Those objects are left out instead; pass them
again to ``load_from_checkpoint`` (Lightning's own advice for ``nn.Module`` arguments).
"""
from __future__ import annotations

from typing import Any, List

from torch import nn

from siglip_lightning import _compat


def module_hparams_to_ignore(**init_args: Any) -> List[str]:
    """Names of ``init_args`` holding ``nn.Module`` objects, unless the CLI supplies their config."""
    if _compat.cli_hyperparameters() is not None:
        return []
    return [name for name, value in init_args.items() if isinstance(value, nn.Module)
            or (isinstance(value, (list, tuple)) and any(isinstance(v, nn.Module) for v in value))]
