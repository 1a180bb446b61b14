"""``siglip-lightning``: LightningCLI over SigLIPModule and ImageTextDataModule."""
from __future__ import annotations

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


def main(args: Optional[List[str]] = None) -> None:
    """Console script entry point. Returns None: a returned CLI object would make the exit code 1."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["train-tokenizer"]:  # the one subcommand LightningCLI does not own
            from siglip_lightning.data.train_tokenizer import main as train_tokenizer

            return train_tokenizer(argv[1:])
        cli_main(args)
    except UserInputError as err:
        print(f"siglip-lightning: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
