"""Bad configs end with an error that names the key, and a non-zero exit code."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import tiny_fit_args
from siglip_lightning.cli import main
from siglip_lightning.errors import UserInputError
from siglip_lightning.cli import check_global_batch_size


def _exit(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code, capsys.readouterr().err


def test_unknown_key_names_the_key(tmp_path, capsys):
    code, err = _exit(tiny_fit_args(tmp_path, "--model.learning_rate=0.1"), capsys)
    assert code == 2 and "learning_rate" in err


def test_wrong_type_names_the_key(tmp_path, capsys):
    code, err = _exit(tiny_fit_args(tmp_path, "--model.warmup_steps=ten"), capsys)
    assert code == 2 and "warmup_steps" in err and "ten" in err


def test_unknown_key_in_a_yaml_file_names_the_key(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  lr: 0.001\n  weight_decayy: 0.1\n")
    code, err = _exit(tiny_fit_args(tmp_path, f"--config={config}"), capsys)
    assert code == 2 and "weight_decayy" in err


def test_nonfinite_options_are_validated(tmp_path, capsys):
    code, err = _exit(tiny_fit_args(tmp_path, "--nonfinite.max_consecutive=many"), capsys)
    assert code == 2 and "max_consecutive" in err


def test_global_batch_size_mismatch_names_the_keys(tmp_path, capsys):
    # tiny_fit_args: data.batch_size=16 on 1 device, so 16 is the only global batch that fits
    code, err = _exit(tiny_fit_args(tmp_path, "--global_batch_size=40"), capsys)
    assert code == 2
    assert "global_batch_size=40" in err and "data.batch_size (16)" in err and "trainer.devices (1)" in err
    assert "set data.batch_size=40" in err  # 40 / (1 device x 1 node x 1) divides: say what would fit


def _trainer(devices=1, nodes=1, accumulate=1):
    return SimpleNamespace(num_devices=devices, num_nodes=nodes, accumulate_grad_batches=accumulate)


def _data(batch_size):
    return SimpleNamespace(hparams={"batch_size": batch_size})


@pytest.mark.parametrize("global_batch, devices, nodes, accumulate, per_device", [
    (16, 1, 1, 1, 16), (64, 2, 1, 2, 16), (512, 4, 2, 2, 32),
])
def test_global_batch_size_accepts_exact_products(global_batch, devices, nodes, accumulate, per_device):
    check_global_batch_size(global_batch, _trainer(devices, nodes, accumulate), _data(per_device))


def test_global_batch_size_that_cannot_divide_says_so():
    with pytest.raises(UserInputError, match=r"global_batch_size=100 .* not a multiple of .* = 8"):
        check_global_batch_size(100, _trainer(4, 1, 2), _data(16))
    with pytest.raises(UserInputError, match="global_batch_size must be positive"):
        check_global_batch_size(0, _trainer(), _data(16))
