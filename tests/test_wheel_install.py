"""The package as a user installs it: a wheel in a fresh venv, README commands run from an empty folder.

Nothing here may read the checkout: the commands run with the repository neither on the path nor as the
working directory, so a config they need has to come from the wheel (issue 21, "installed is the same
as cloned"). The fresh venv sees the dependencies of the interpreter running the tests through one
``.pth`` line (a plain path: that site-packages' own ``.pth`` files, among them an editable install of
siglip_lightning, are not processed), and siglip_lightning only as the wheel.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import List

import pytest

from tests.conftest import REPO, TINY_DATA, TINY_MODEL

pytestmark = pytest.mark.slow

# What a wheel is built from: the checkout without its runs, caches and build leftovers, so that a
# build here neither writes into the worktree nor picks up anything a clean clone lacks.
SKIP = shutil.ignore_patterns(".git", ".venv", "runs", "lightning_logs", "build", "dist", "*.egg-info",
                              "__pycache__", ".pytest_cache", ".ipynb_checkpoints", "results")


class Installed:
    def __init__(self, venv: Path, work: Path, env: dict) -> None:
        self.venv, self.work, self.env = venv, work, env

    def run(self, args: List[str], timeout: int = 600) -> subprocess.CompletedProcess:
        """``siglip-lightning ARGS`` through the venv's console script, in the empty working folder."""
        result = subprocess.run([str(self.venv / "bin" / "siglip-lightning"), *args], cwd=self.work, env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"siglip-lightning {' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=SKIP, symlinks=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(root / "dist"), str(source)], check=True, capture_output=True, text=True)
    wheel, = (root / "dist").glob("siglip_lightning-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    # pip of this interpreter installs into the new venv (--python): no pip bootstrap, no index.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--force-reinstall", "--no-index", str(wheel)], check=True, capture_output=True,
                   text=True)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    # After the install, so that pip never sees the other environment's siglip_lightning.
    (purelib / "_siglip_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return Installed(venv, work, env)


def test_the_wheel_is_what_runs(installed):
    out = subprocess.run([str(installed.venv / "bin" / "python"), "-c",
                          "import siglip_lightning, sysconfig; print(siglip_lightning.__file__); "
                          "print(sysconfig.get_paths()['purelib'])"],
                         cwd=installed.work, env=installed.env, check=True, capture_output=True, text=True)
    where, purelib = out.stdout.split()
    assert Path(where).is_relative_to(Path(purelib)), (where, purelib)
    assert Path(purelib).is_relative_to(installed.venv)
    assert not Path(where).resolve().is_relative_to(REPO.resolve()) and not where.startswith("/work/"), where
    shipped = Path(where).parent / "configs"
    assert (shipped / "quickstart.yaml").is_file(), "configs/ not shipped in the wheel"
    names = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))
    assert names(shipped) == names(REPO / "configs")  # every YAML, eval/ experiments/ runlocal/ ... included


@pytest.fixture(scope="module")
def fitted(installed) -> Path:
    """README: ``siglip-lightning fit --config configs/quickstart.yaml``, shrunk to 2 steps."""
    installed.run(["fit", "--config", "configs/quickstart.yaml", *TINY_DATA, *TINY_MODEL,
                   "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
                   "--trainer.enable_model_summary=false"])
    return installed.work / "runs" / "quickstart"


def test_fit_with_the_packaged_quickstart(installed, fitted):
    assert (fitted / "checkpoints" / "last.ckpt").is_file()
    assert (fitted / "config.yaml").is_file() or list(fitted.rglob("config.yaml"))
    assert not (installed.work / "configs").exists()  # read from the package, nothing copied here


def test_evaluate_with_the_packaged_suite(installed, fitted):
    installed.run(["evaluate", "--model", "runs/quickstart", "--suite", "configs/eval/builtin.yaml", "--out", "results",
                   "--device", "cpu"])
    assert list((installed.work / "results").rglob("results.json"))


def test_export(installed, fitted):
    installed.run(["export", "--ckpt_path", "runs/quickstart/checkpoints/last.ckpt", "--format", "hf",
                   "--out", "exported"])
    assert any((installed.work / "exported").iterdir())


def test_plan_with_the_packaged_recipe(installed):
    result = installed.run(["plan", "--config", "configs/siglip_b16.yaml", "--plan.device", "H100", "--data.batch_size=2",
                            "--model.image_tower.init_args.layers=1", "--model.text_tower.init_args.layers=1"])
    assert "H100" in result.stdout


def test_experiments_resolves_the_packaged_study_and_its_base(installed):
    result = installed.run(["experiments", "--config", "configs/experiments/batchsize_sweep.yaml", "--quick", "--list"])
    assert "4 cells" in result.stdout
    assert "siglip_lightning/configs/experiments/siglit/text_tower.yaml" in result.stdout  # base: from the wheel


def test_experiment_modules_read_the_wheels_configs(installed):
    """The sweeps' built-in preparation and the study scripts take their fit configs from the package."""
    code = ("from siglip_lightning.experiments import siglit, forgetting, overhead, naflex_compare; "
            "print(siglit.SiglitSetup().tower_config); print(overhead.BASE)")
    out = subprocess.run([str(installed.venv / "bin" / "python"), "-c", code], cwd=installed.work, env=installed.env,
                         check=True, capture_output=True, text=True).stdout.split()
    assert len(out) == 2 and all(Path(p).is_file() and Path(p).is_relative_to(installed.venv) for p in out), out


def test_configs_command_copies_what_a_user_edits(installed):
    listed = installed.run(["configs"]).stdout.split()
    assert "configs/quickstart.yaml" in listed and "configs/strategies/ddp.yaml" in listed
    installed.run(["configs", "--copy", "mine"])
    assert (installed.work / "mine" / "configs" / "runlocal" / "siglip_b16.yaml").is_file()


def test_make_data(installed):
    installed.run(["make-data", "--out", "shapes", "--spec.num_train", "64", "--spec.num_validation", "16",
                   "--spec.zeroshot_per_class", "1", "--spec.num_shards", "1"])
    assert (installed.work / "shapes").is_dir()
