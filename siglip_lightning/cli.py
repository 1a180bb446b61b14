"""``siglip-lightning``: LightningCLI over SigLIPModule and ImageTextDataModule."""
from __future__ import annotations

import importlib
import os
import sys
import traceback
from argparse import ArgumentError
from typing import Any, List, Optional

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from siglip_lightning._compat import quiet_print_config
from siglip_lightning.config_files import resolve_args
from siglip_lightning.data.datamodule import ImageTextDataModule
from siglip_lightning.errors import TrainingAbortedError, UserInputError
from siglip_lightning.checkpointing import NonFiniteGuard, RNGStateCallback, install_atomic_io
from siglip_lightning.checkpointing.failures import (StopPeersOnFailure, describe_distributed_failure,
                                                report_distributed_failure)
from siglip_lightning.model.module import SigLIPModule


class SigLIPCLI(LightningCLI):
    """fit / validate / test / predict, configured by YAML (``--config``) and flags."""

    def __init__(self, *args, **kwargs) -> None:
        self._pretrained_parsers: List[LightningArgumentParser] = []  # every parser that takes --pretrained
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
        parser.add_argument("--pretrained", type=Optional[str], default=None,
                            help="A local Hugging Face SigLIP / SigLIP 2 or open_clip SigLIP model folder to fine-tune: "
                                 "sets the towers, t' and b, the tokenizer and the image preprocessing, unless "
                                 "a config file or flag sets them (docs/FINETUNING.md).")
        self._pretrained_parsers.append(parser)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # --pretrained FOLDER (flag or config key) as the parser reads it, then the folder's settings as
        # parser defaults and a second parse: every value set in a config file or flag wins over them.
        # (Not link_arguments: a link silently overrides a value set by hand.)
        towers = [{key: each.get_default(key) for key in TOWER_KEYS} for each in self._pretrained_parsers]
        path = self._read_pretrained(parser, args)
        settings = {}
        if path:
            from siglip_lightning.interop.pretrained_folder import pretrained_settings

            settings = pretrained_settings(path)
        for each, defaults in zip(self._pretrained_parsers, towers):
            each.set_defaults({**defaults, **settings})  # the stand-in towers give way
        super().parse_arguments(parser, args)

    def _read_pretrained(self, parser: LightningArgumentParser, args: Any) -> Optional[str]:
        """``pretrained`` as parsed from the flags and config files (no validation, no --print_config).

        Tower ``init_args`` given without a ``class_path`` are meant for the folder's towers, which are
        not known yet: if they fail to parse, a stand-in tower class taking any of their arguments
        parses them meanwhile. Anything else that fails is left to the real parse to report."""
        from siglip_lightning.interop.pretrained_folder import stand_in_towers

        parsers = [parser, *self._pretrained_parsers]
        for attempt in range(2):
            if attempt:
                for each in self._pretrained_parsers:
                    each.set_defaults(stand_in_towers(TOWER_KEYS))
            flags = [each.exit_on_error for each in parsers]
            try:
                for each in parsers:
                    each.exit_on_error = False  # raise, do not print: this parse only looks
                with quiet_print_config():
                    first = (parser.parse_object(args, _skip_validation=True) if isinstance(args, (dict, Namespace))
                             else parser.parse_args(args, _skip_validation=True))
                subcommand = first.get("subcommand")
                return first.get(f"{subcommand}.pretrained" if subcommand else "pretrained")
            except ArgumentError:
                continue
            finally:
                for each, flag in zip(parsers, flags):
                    each.exit_on_error = flag
        return None

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        from siglip_lightning.interop.read_once import forget

        forget()  # the towers hold the pretrained weights now: no second copy for the whole run

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


TOWER_KEYS = ("model.image_tower", "model.text_tower")


def cli_main(args: Optional[List[str]] = None, **kwargs) -> SigLIPCLI:
    """Run the CLI on ``args`` (``None``: ``sys.argv``) and return it (for tests and notebooks)."""
    # Tokenizers are used inside DataLoader workers: stop the HF fast-tokenizer fork warning noise.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return SigLIPCLI(args=args, **kwargs)


# Subcommands outside LightningCLI's fit/validate/test/predict, one module each in commands/ with main(argv).
EXTRA_COMMANDS = {
    "evaluate": "siglip_lightning.commands.evaluate",
    "export": "siglip_lightning.commands.export",
    "cache-embeddings": "siglip_lightning.commands.cache_embeddings",
    "train-tokenizer": "siglip_lightning.commands.train_tokenizer",
    "make-data": "siglip_lightning.commands.make_data",
    "experiments": "siglip_lightning.commands.experiments",
    "wise-ft": "siglip_lightning.commands.wise_ft",
    "plan": "siglip_lightning.commands.plan",
    "configs": "siglip_lightning.commands.configs",
}


def _extra_command(args: List[str]):
    if args and args[0] in EXTRA_COMMANDS:
        return importlib.import_module(EXTRA_COMMANDS[args[0]]).main
    return None


def main(args: Optional[List[str]] = None) -> None:
    """Console script entry point. Returns None: a returned CLI object would make the exit code 1."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        # `--config configs/...` as in the README works from any directory: the packaged file when absent here
        argv = resolve_args(argv)
        extra = _extra_command(argv)
        if extra is not None:
            extra(argv[1:])
            return
        if args is None:
            sys.argv[1:] = argv  # LightningCLI reads sys.argv (given args while sys.argv has some, it warns)
            cli_main(None)
        else:
            cli_main(argv)
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
