"""Every use of another library's private API, in one place, checked against the pinned versions.

Each function below reaches into Lightning or torch internals that have no public equivalent
(the reason is given with it). They do not fall back silently: if an internal moved, the call
fails with an error naming this file. ``TESTED`` is the range pyproject.toml pins and CI tests
(``tests/test_compat.py`` checks both agree and exercises every function here on the installed
versions); outside it a warning is printed once at import.
"""
from __future__ import annotations

import contextvars
import os
import warnings
from typing import Any, List, Optional

import lightning
import torch
from lightning.pytorch.core.mixins import hparams_mixin
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from packaging.version import Version

#: (package, lowest tested, first untested) — the same bounds as pyproject.toml's dependency pins.
TESTED = {"lightning": ("2.6", "2.7")}


def _check_versions() -> None:
    low, high = TESTED["lightning"]
    installed = Version(lightning.__version__)
    if not Version(low) <= installed < Version(high):
        warnings.warn(f"siglip-lightning is tested with lightning>={low},<{high}; {installed} is installed: the "
                      "private Lightning APIs used in siglip_lightning/_compat.py may have moved", stacklevel=2)


_check_versions()


def _moved(what: str) -> RuntimeError:
    return RuntimeError(f"{what} is not where siglip_lightning/_compat.py expects it (lightning "
                        f"{lightning.__version__}, torch {torch.__version__}); pin the versions in pyproject.toml")


# --- Lightning ------------------------------------------------------------------------------------

def cli_hyperparameters() -> Optional[dict]:
    """The config LightningCLI is instantiating the module from, or None outside the CLI.

    Lightning records it in a context variable so that ``save_hyperparameters`` stores class paths
    instead of objects; model/hparams.py needs to know which of the two will happen.
    """
    given = getattr(hparams_mixin, "_given_hyperparameters", None)
    if not isinstance(given, contextvars.ContextVar):
        raise _moved("lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters")
    return given.get()


def logs_this_step(trainer: Any) -> bool:
    """Whether the logger writes on this step (``log_every_n_steps``): values logged on other steps
    are dropped, so the module skips computing them (each ``self.log`` costs ~1.5 ms on a CPU)."""
    connector = trainer._logger_connector
    return bool(connector.should_update_logs)


def batches_started_this_epoch(trainer: Any) -> int:
    """Training batches the fit loop has taken this epoch (resume bookkeeping of the datamodule)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


def attached_trainer(module: Any) -> Optional[Any]:
    """The module's trainer, or None (``LightningModule.trainer`` raises when there is none)."""
    return module._trainer


def is_subprocess_launcher(launcher: Any) -> bool:
    """Whether Lightning started the other ranks as child processes of this one (``devices=N`` on one
    machine): only then can rank 0 kill them when it fails (checkpointing/failures.py)."""
    return isinstance(launcher, _SubprocessScriptLauncher)


# Lightning calls ``optimizer_zero_grad`` between ``training_step`` and backward; gradient caching
# (model/gradcache.py) fills the gradients inside ``training_step``, so SigLIPModule overrides that
# public hook to skip one zeroing. tests/model/test_gradcache.py checks the order still holds.


# --- torch ----------------------------------------------------------------------------------------

def softplus_into(logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``F.softplus(logits)`` (beta 1, threshold 20) written into ``out``: ``F.softplus`` has no ``out=``,
    and a fresh tile-sized buffer per tile costs more than the arithmetic (losses/blockwise.py)."""
    return torch._C._nn.softplus(logits, 1, 20, out=out)


def foreach_norm(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """One norm per tensor in one fused call (the non-finite guard's per-step check)."""
    return torch._foreach_norm(tensors)


def shared_memory_empty(like: torch.Tensor, numel: int) -> torch.Tensor:
    """An uninitialised 1-D tensor of ``like``'s dtype in shared memory, as ``default_collate`` makes in a
    DataLoader worker so that the batch is not copied again on its way to the main process
    (NaFlex batches, towers/patches.py)."""
    return like.new(like._typed_storage()._new_shared(numel, device=like.device))


def hard_exit(code: int) -> None:
    """End the process now, without running exit handlers: a hung thread may hold locks that a
    normal exit would wait on forever (checkpointing/watchdog.py)."""
    os._exit(code)


# --- jsonargparse ---------------------------------------------------------------------------------

def quiet_print_config():
    """A context in which a parse does not act on ``--print_config`` (print and exit): cli.py parses
    once to read ``--pretrained``, then again with the folder's defaults, and only the second prints.
    jsonargparse's own switch for this is private."""
    from jsonargparse._actions import _ActionPrintConfig

    skip = getattr(_ActionPrintConfig, "skip_print_config", None)
    if skip is None:
        raise RuntimeError("jsonargparse._actions._ActionPrintConfig.skip_print_config is not where "
                           "siglip_lightning/_compat.py expects it; pin jsonargparse in pyproject.toml")
    return skip()


# --- torch: the dry-run planner (siglip_lightning/plan/) -----------------------------------------

def fake_tensor_mode() -> Any:
    """A ``FakeTensorMode``: tensors with shapes, dtypes and devices but no storage, so the planner can
    run a B/16's step without allocating it. Unlike torch's, an op whose tensors are all real runs for
    real (a NaFlex batch's mask and patch-grid shapes, which the tower reads as Python numbers); an op
    mixing real and fake tensors gives a fake one."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily

    def tensors(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (tuple, list)):
            for item in value:
                yield from tensors(item)
        elif isinstance(value, dict):
            for item in value.values():
                yield from tensors(item)

    class KeepsRealTensorsReal(FakeTensorMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            found = list(tensors([args, kwargs or {}]))
            if found and not any(isinstance(t, FakeTensor) for t in found):
                with unset_fake_temporarily():
                    return func(*args, **(kwargs or {}))
            return super().__torch_dispatch__(func, types, args, kwargs)

    return KeepsRealTensorsReal(allow_non_fake_inputs=True)


def dispatch_mode_class() -> type:
    """``TorchDispatchMode``, the base of the planner's live-bytes tracker: it sees every aten op and the
    storages it returns (no public equivalent; torch's own MemTracker builds on it)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    return TorchDispatchMode


def cpu_attention_ops() -> tuple:
    """The CPU kernels of ``scaled_dot_product_attention`` (forward, backward). ``FlopCounterMode`` counts
    the CUDA kernels only, so the planner maps these two to the same formulas (plan/flops.py)."""
    aten = torch.ops.aten
    return aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention_for_cpu_backward


def outside_fake_mode() -> Any:
    """A context in which tensors are real again (inside the planner's fake mode): a NaFlex batch's mask
    and patch-grid shapes, which the tower reads as Python numbers."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    return unset_fake_temporarily()


class _GlobalOnly:
    """Stands in for ``FlopCounterMode``'s module tracker: every FLOP counts toward "Global" only."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def count_flops_globally(counter: Any) -> Any:
    """``counter`` (a ``FlopCounterMode``) without its per-module breakdown. Its module tracker hooks the
    inputs of every module, and fails on a tensor that requires grad without a grad_fn, which a
    parameter's view made under ``no_grad`` is (the MAP head's probe in gradient caching's first pass);
    ``get_total_flops`` only needs the "Global" count."""
    if not hasattr(counter, "mod_tracker"):
        raise _moved("torch.utils.flop_counter.FlopCounterMode.mod_tracker")
    counter.mod_tracker = _GlobalOnly()
    return counter
