"""``siglip-lightning``: LightningCLI over SigLIPModule and ImageTextDataModule."""
from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import List, Optional

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from siglip_lightning.data.datamodule import ImageTextDataModule
from siglip_lightning.errors import TrainingAbortedError, UserInputError
from siglip_lightning.fault import NonFiniteGuard, RNGStateCallback, install_atomic_io
from siglip_lightning.fault.distributed import (StopPeersOnFailure, describe_distributed_failure,
                                                report_distributed_failure)
from siglip_lightning.fault.validate import check_global_batch_size
from siglip_lightning.module import SigLIPModule


class SigLIPCLI(LightningCLI):
    """fit / validate / test / predict, configured by YAML (``--config``) and flags."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"epilog": "Other commands (each takes --help): "
                                            + ", ".join(EXTRA_COMMANDS) + "."})
        super().__init__(SigLIPModule, ImageTextDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Always on, tuned with --nonfinite.max_consecutive=N (see docs/RESUMING.md).
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_argument("--global_batch_size", type=Optional[int], default=None,
                            help="If set, fail unless data.batch_size x devices x num_nodes x "
                                 "accumulate_grad_batches equals it (a check, nothing is derived from it).")

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        # Every CLI run: RNG states in checkpoints, atomic checkpoint files, DDP peers stopped on a
        # failed collective (docs/RESUMING.md).
        if not any(isinstance(cb, RNGStateCallback) for cb in trainer.callbacks):
            trainer.callbacks.insert(0, RNGStateCallback())
        trainer.callbacks.append(StopPeersOnFailure())
        install_atomic_io(trainer)
        return trainer

    def before_fit(self) -> None:
        check_global_batch_size(self.config["fit"].get("global_batch_size"), self.trainer, self.datamodule)


def cli_main(args: Optional[List[str]] = None, **kwargs) -> SigLIPCLI:
    """Run the CLI on ``args`` (``None``: ``sys.argv``) and return it (for tests and notebooks)."""
    # Tokenizers are used inside DataLoader workers: stop the HF fast-tokenizer fork warning noise.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return SigLIPCLI(args=args, **kwargs)


# Subcommands outside LightningCLI's fit/validate/test/predict: name -> "module:function(argv)".
EXTRA_COMMANDS = {
    "export": "siglip_lightning.export:main",
    "cache-embeddings": "siglip_lightning.precomputed:cache_main",
    "train-tokenizer": "siglip_lightning.data.train_tokenizer:main",
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
    except TrainingAbortedError as err:
        print(f"siglip-lightning: training aborted: {err}", file=sys.stderr)
        sys.exit(3)
    except Exception as err:
        if describe_distributed_failure(err) is None:
            raise
        traceback.print_exc()  # the details, then the one line that says what they mean
        report_distributed_failure(err)  # unless StopPeersOnFailure already did
        sys.exit(1)


if __name__ == "__main__":
    main()
