"""The evaluation callbacks through the real CLI: during fit (1 process and 2-process DDP) and in
``validate --ckpt_path`` with the shipped eval configs pointed at small stand-in data."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict

import pytest
import yaml

from tests.conftest import REPO, run_cli, tiny_fit_args
from tests.helpers.eval_data import make_imagefolder, make_karpathy_json, make_multilingual_parquet, make_wnid_folder


def eval_metrics(root: Path) -> Dict[str, str]:
    """Every ``zeroshot/`` and ``retrieval/`` value of the CSV logs under ``root``, keyed by name|step."""
    files = sorted(root.rglob("metrics.csv"))
    assert files, f"no metrics.csv under {root}"
    out = {}
    for row in csv.DictReader(files[-1].open()):
        out.update({f"{k}|{row['step']}": v for k, v in row.items() if v and k.startswith(("zeroshot/", "retrieval/"))})
    return out


def write_config(path: Path, callbacks: list, log_dir: Path) -> Path:
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(log_dir)}}
    path.write_text(yaml.safe_dump({"trainer": {"logger": logger, "callbacks": callbacks}}))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-data")
    return {"folder": make_imagefolder(root / "folder"), "coco": make_karpathy_json(root / "coco"),
            "xm": make_multilingual_parquet(root / "xm")}


def fit_callbacks(data) -> list:
    return [
        {"class_path": "siglip_lightning.eval.ZeroShotClassification", "init_args": {"name": "builtin"}},
        {"class_path": "siglip_lightning.eval.ZeroShotClassification",
         "init_args": {"name": "folder", "path": str(data["folder"]), "templates": "simple", "batch_size": 5}},
        {"class_path": "siglip_lightning.eval.Retrieval",
         "init_args": {"name": "coco", "path": str(data["coco"]), "batch_size": 7}},
        {"class_path": "siglip_lightning.eval.Retrieval",
         "init_args": {"name": "xm", "path": str(data["xm"]), "image_id_column": "image_id",
                       "language_column": "language", "every_n_steps": 1, "query_chunk": 3, "key_chunk": 5}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
    ]


def fit(root: Path, data, *extra: str):
    config = write_config(root.parent / f"{root.name}.yaml", fit_callbacks(data), root)
    # lr 0: the weights stay at their (seeded) init, so runs with any number of processes see one model.
    args = tiny_fit_args(root, "--config", str(config), "--model.lr=0", "--seed_everything=0", *extra)
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    return eval_metrics(root)


@pytest.fixture(scope="module")
def single(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("fit-1")
    return root, fit(root, data)


def test_fit_logs_every_evaluation(single):
    _, metrics = single
    names = {key.split("|")[0] for key in metrics}
    for expected in ("zeroshot/builtin/top1", "zeroshot/folder/top5", "retrieval/coco/image_to_text_R@1",
                     "retrieval/coco/text_to_image_R@10", "retrieval/xm/en/image_to_text_R@5",
                     "retrieval/xm/xx/text_to_image_R@1", "retrieval/xm/image_to_text_R@10"):
        assert expected in names, sorted(names)
    assert all(0.0 <= float(v) <= 1.0 for v in metrics.values())
    # every_n_steps=1 evaluated "xm" after each of the 2 training steps
    assert len({k for k in metrics if k.startswith("retrieval/xm/image_to_text_R@1|")}) == 2


def test_ddp_two_processes_match_one(single, tmp_path, data):
    _, one = single
    two = fit(tmp_path / "fit-2", data, "--trainer.devices=2", "--trainer.strategy=ddp")
    assert two == one


@pytest.mark.slow  # ~30 s of CPU (1000-class stand-in ImageNet); the configs' parsing is a default test
def test_validate_checkpoint_with_shipped_eval_configs(single, tmp_path, data):
    root, fit_metrics = single
    run_config = next(root.rglob("config.yaml"))
    checkpoint = next(root.rglob("last.ckpt"))
    # A stand-in ImageNet val folder: 1000 WordNet-id-like folders, one image each.
    imagenet = make_wnid_folder(tmp_path / "imagenet" / "val")
    callbacks = []
    # Only the data locations change, and the 80 prompts shrink to CLIP's 7 (80k prompts through
    # even a tiny text tower take a minute on a busy CPU).
    for name, changes in (("eval_imagenet.yaml", {"path": str(imagenet), "templates": "simple"}),
                          ("eval_coco.yaml", {"path": str(data["coco"]), "image_root": str(data["coco"].parent)})):
        shipped = yaml.safe_load((REPO / "configs" / name).read_text())
        for callback in shipped["trainer"]["callbacks"]:
            callback["init_args"].update(changes, num_workers=0)
            callbacks.append(callback)
    config = write_config(tmp_path / "eval.yaml", callbacks, tmp_path / "logs")
    result = run_cli(["validate", "--config", str(run_config), "--config", str(config),
                      f"--ckpt_path={checkpoint}"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = {key.split("|")[0]: value for key, value in eval_metrics(tmp_path / "logs").items()}
    assert float(metrics["zeroshot/imagenet/chance"]) == pytest.approx(1 / 1000)
    assert float(metrics["zeroshot/imagenet/top5"]) >= float(metrics["zeroshot/imagenet/top1"])
    # the checkpoint holds the fit's (unchanged, lr 0) weights: same retrieval numbers as during fit
    at_validation = {k.split("|")[0]: v for k, v in fit_metrics.items() if k.startswith("retrieval/coco/")}
    assert at_validation and {k: metrics[k] for k in at_validation} == at_validation
