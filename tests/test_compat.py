"""_compat.py: its version range is the one pyproject pins, and every private access works here."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import torch
import torch.nn.functional as F
from packaging.version import Version

from siglip_lightning import _compat

REPO = Path(__file__).resolve().parents[1]


def test_tested_range_matches_pyproject_and_installed_version():
    low, high = _compat.TESTED["lightning"]
    pin = re.search(r'"lightning([^"]*)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert pin == f">={low},<{high}", pin
    assert Version(low) <= Version(lightning.__version__) < Version(high)


def test_softplus_into_equals_softplus():
    x = torch.randn(37, 11, dtype=torch.float64) * 30  # both sides of the threshold 20
    out = torch.empty_like(x)
    _compat.softplus_into(x, out)
    torch.testing.assert_close(out, F.softplus(x), rtol=0, atol=0)


def test_foreach_norm_equals_norms():
    tensors = [torch.randn(5, 3), torch.randn(7)]
    for ours, ref in zip(_compat.foreach_norm(tensors), [t.norm() for t in tensors]):
        torch.testing.assert_close(ours, ref)


def test_hard_exit_ends_the_process_with_the_code():
    code = "from siglip_lightning import _compat; _compat.hard_exit(7); print('not reached')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 7 and "not reached" not in done.stdout


def test_lightning_internals_in_a_fit():
    """logs_this_step, batches_started_this_epoch, attached_trainer and cli_hyperparameters on a real fit."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.demos.boring_classes import BoringModel

    seen = []

    class Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((_compat.logs_this_step(trainer), _compat.batches_started_this_epoch(trainer),
                         _compat.attached_trainer(pl_module) is trainer))

    trainer = Trainer(max_steps=4, log_every_n_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[Probe()])
    trainer.fit(BoringModel())
    assert [s[1] for s in seen] == [1, 2, 3, 4]
    assert [s[0] for s in seen] == [False, True, False, True]  # steps 2 and 4 (global_step 1 and 3) log
    assert all(s[2] for s in seen)
    assert _compat.attached_trainer(BoringModel()) is None
    assert _compat.cli_hyperparameters() is None  # outside LightningCLI
    assert not _compat.is_subprocess_launcher(trainer.strategy.launcher)


def test_shared_memory_empty_is_shared_and_sized():
    like = torch.zeros(3, dtype=torch.float16)
    out = _compat.shared_memory_empty(like, 12)
    assert out.shape == (12,) and out.dtype == torch.float16 and out.is_shared()


def test_quiet_print_config_parses_without_printing(capsys):
    from jsonargparse import ActionConfigFile, ArgumentParser

    from siglip_lightning._compat import quiet_print_config

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--x", type=int, default=1)
    with quiet_print_config():
        assert parser.parse_args(["--x=3", "--print_config"]).x == 3  # parsed, nothing printed, no exit
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit):
        parser.parse_args(["--x=4", "--print_config"])
    assert "x: 4" in capsys.readouterr().out


def test_planner_fake_mode_keeps_real_tensors_real_and_allocates_nothing():
    from torch._subclasses.fake_tensor import FakeTensor

    real = torch.tensor([[2, 3], [4, 1]])
    with _compat.fake_tensor_mode():
        huge = torch.empty(10**12)  # 4 TB: no memory behind a fake tensor
        assert isinstance(huge, FakeTensor) and huge.shape == (10**12,)
        counts = real.prod(-1)  # only real inputs: runs for real, readable as numbers
        assert not isinstance(counts, FakeTensor) and counts.tolist() == [6, 4]
        assert isinstance(huge[:2] + real[0], FakeTensor)  # mixed: fake
        with _compat.outside_fake_mode():
            assert not isinstance(torch.ones(3), FakeTensor)


def test_dispatch_mode_sees_the_cpu_attention_kernels():
    forward, backward = _compat.cpu_attention_ops()
    seen = set()

    class Ops(_compat.dispatch_mode_class()):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(func._overloadpacket)
            return func(*args, **(kwargs or {}))

    q = torch.randn(2, 2, 4, 8, requires_grad=True)
    with Ops():
        F.scaled_dot_product_attention(q, q, q).sum().backward()
    assert {forward, backward} <= seen


def test_flop_counter_without_module_tracking_counts_a_no_grad_pass():
    from torch.utils.flop_counter import FlopCounterMode

    from siglip_lightning.towers.layers import MAPHead

    head, tokens = MAPHead(16, 2), torch.randn(3, 5, 16)
    counter = _compat.count_flops_globally(FlopCounterMode(display=False))
    with counter, torch.no_grad():  # the probe's view made under no_grad trips torch's module tracker
        head(tokens)
    linear = 2 * 3 * (16 * 16 + 5 * 16 * 32 + 16 * 16 + 2 * 16 * 64)  # q, k v, out, MLP
    assert counter.get_total_flops() == linear  # attention runs on CPU kernels FlopCounterMode skips
