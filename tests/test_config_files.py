"""Packaged configs: ``configs/...`` found from any directory, the wheel's file list, the ``configs`` command."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from siglip_lightning import config_files
from siglip_lightning.commands import configs as configs_command
from siglip_lightning.config_files import configs_root, list_configs, resolve, resolve_args
from siglip_lightning.experiments.sweep import load_sweep
from tests.conftest import REPO


def test_a_checkout_reads_its_own_configs_folder():
    assert configs_root() == REPO / "configs"  # no siglip_lightning/configs in a clone: one copy of the YAML
    assert not (REPO / "siglip_lightning" / "configs").exists()


def test_relative_configs_path_falls_back_to_the_package_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert resolve("configs/quickstart.yaml") == str(REPO / "configs" / "quickstart.yaml")
    assert resolve("./configs/eval/builtin.yaml") == str(REPO / "configs" / "eval" / "builtin.yaml")
    assert "using the packaged" in capsys.readouterr().err
    # untouched: a file of the working directory (an edited copy wins), unknown names, other paths
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "quickstart.yaml").write_text("seed_everything: 1\n")
    for value in ("configs/quickstart.yaml", "configs/nope.yaml", "my.yaml", "/abs/configs/x.yaml",
                  "configs/../etc/x.yaml"):
        assert resolve(value) == value
    assert capsys.readouterr().err == ""


def test_resolve_args_rewrites_only_config_file_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = str(REPO / "configs" / "siglip_b16.yaml")
    argv = ["fit", "--config", "configs/siglip_b16.yaml", "--config=configs/siglip_b16.yaml", "-c",
            "configs/siglip_b16.yaml", "--data.path", "configs/siglip_b16.yaml"]
    assert resolve_args(argv) == ["fit", "--config", packaged, f"--config={packaged}", "-c", packaged,
                                  "--data.path", "configs/siglip_b16.yaml"]
    suite = str(REPO / "configs" / "eval" / "builtin.yaml")
    assert resolve_args(["evaluate", "--suite", "configs/eval/builtin.yaml"]) == ["evaluate", "--suite", suite]


def test_sweep_base_lists_resolve_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_sweep("configs/experiments/batchsize_sweep.yaml", quick=True)
    assert config["base"] == [str(REPO / "configs" / "experiments" / "siglit" / "text_tower.yaml")]
    config = load_sweep("configs/experiments/batchsize_sweep.yaml", base=["configs/siglip_b16.yaml"])
    assert config["base"] == [str(REPO / "configs" / "siglip_b16.yaml")]


def test_configs_command_lists_prints_and_copies(tmp_path, capsys):
    configs_command.main([])
    listed = capsys.readouterr().out.split()
    on_disk = sorted(f"configs/{p.relative_to(REPO / 'configs').as_posix()}" for p in (REPO / "configs").rglob("*.yaml"))
    assert listed == on_disk == list_configs()
    configs_command.main(["--path", "configs/eval/builtin.yaml"])
    assert capsys.readouterr().out.strip() == str(REPO / "configs" / "eval" / "builtin.yaml")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "quickstart.yaml").write_text("edited: true\n")
    configs_command.main(["--copy", str(tmp_path)])
    assert (tmp_path / "configs" / "quickstart.yaml").read_text() == "edited: true\n"  # never overwritten
    assert (tmp_path / "configs" / "experiments" / "siglit" / "text_tower.yaml").is_file()


def test_nothing_in_the_package_reaches_into_the_checkout():
    """Only config_files.py may look beside the package (the checkout fallback, for clones)."""
    offenders = []
    for path in (REPO / "siglip_lightning").rglob("*.py"):
        text = path.read_text()
        if path.name != "config_files.py" and re.search(r"parents\[\d\]\s*/\s*\"configs\"|REPO\s*/\s*['\"]configs", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_a_broken_install_names_the_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(config_files, "_PACKAGE", tmp_path / "siglip_lightning")
    with pytest.raises(config_files.UserInputError, match="no packaged configs"):
        configs_root()
