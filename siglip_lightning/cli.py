"""``siglip-lightning``: LightningCLI over SigLIPModule and ImageTextDataModule."""
from __future__ import annotations

import importlib
import os
import sys
from typing import List, Optional

from lightning.pytorch.cli import LightningCLI

from siglip_lightning.data.datamodule import ImageTextDataModule
from siglip_lightning.errors import UserInputError
from siglip_lightning.module import SigLIPModule


class SigLIPCLI(LightningCLI):
    """fit / validate / test / predict, configured by YAML (``--config``) and flags."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(SigLIPModule, ImageTextDataModule, *args, **kwargs)


def cli_main(args: Optional[List[str]] = None, **kwargs) -> SigLIPCLI:
    """Run the CLI on ``args`` (``None``: ``sys.argv``) and return it (for tests and notebooks)."""
    # Tokenizers are used inside DataLoader workers: stop the HF fast-tokenizer fork warning noise.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return SigLIPCLI(args=args, **kwargs)


# Subcommands outside LightningCLI's fit/validate/test/predict: name -> "module:function(argv)".
EXTRA_COMMANDS = {
    "export": "siglip_lightning.export:main",
    "cache-embeddings": "siglip_lightning.precomputed:cache_main",
}


def _extra_command(args: List[str]):
    if args and args[0] in EXTRA_COMMANDS:
        module_name, func = EXTRA_COMMANDS[args[0]].split(":")
        return getattr(importlib.import_module(module_name), func)
    return None


def main(args: Optional[List[str]] = None) -> None:
    """Console script entry point. Returns None: a returned CLI object would make the exit code 1."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        extra = _extra_command(argv)
        if extra is not None:
            extra(argv[1:])
            return
        cli_main(args)
    except UserInputError as err:
        print(f"siglip-lightning: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
