"""A newcomer's first run of configs/quickstart.yaml: one last.ckpt, and no "Epoch 0/-2" progress bar."""
from __future__ import annotations

import re

import yaml

from tests.conftest import REPO, TINY_DATA, TINY_MODEL, run_cli


def test_quickstart_writes_one_last_checkpoint_and_a_sane_progress_bar(tmp_path):
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    root = tmp_path / "run"
    config["trainer"].update(default_root_dir=str(root), max_steps=4, val_check_interval=2, limit_val_batches=1)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(root)
    for callback in config["trainer"]["callbacks"]:
        args = callback.get("init_args", {})
        if "every_n_train_steps" in args:
            args["every_n_train_steps"] = 2
        if "train_time_interval" in args:
            args["train_time_interval"] = "0:00:00"  # both checkpoint callbacks save at every chance
        if "refresh_rate" in args:
            args["refresh_rate"] = 1
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli(["fit", "--config", str(path), *TINY_DATA, *TINY_MODEL])
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in (root / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("last")] == ["last.ckpt"], names
    shown = result.stdout + result.stderr
    assert re.search(r"Epoch 0\b", shown), shown[-2000:]
    assert not re.search(r"Epoch \d+/-\d", shown), re.findall(r"Epoch [^\n\r]{0,20}", shown)[:3]
