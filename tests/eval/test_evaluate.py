"""``siglip-lightning evaluate``: the built-in suite on a tiny model of each kind, the same numbers as
``validate`` on a run and as transformers on a SiglipModel folder, and one clear line for bad input."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from siglip_lightning.cli import cli_main, main
from siglip_lightning.commands.evaluate import evaluate
from tests.conftest import tiny_fit_args
from tests.helpers.eval_data import make_imagefolder
from tests.helpers.pretrained_factory import make_hf_siglip, make_open_clip_siglip

TINY_BUILTIN = {"num_train": 32, "num_validation": 40, "zeroshot_per_class": 2, "num_shards": 1, "image_size": 16}
TASKS = [{"name": "shapes_zeroshot", "task": "zeroshot", "path": "builtin"},
         {"name": "shapes_retrieval", "task": "retrieval", "path": "builtin"}]
METRICS = {"shapes_zeroshot": {"top1", "top5", "chance"},
           "shapes_retrieval": {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}}


def write_suite(path: Path, tasks=TASKS, **top) -> Path:
    path.write_text(yaml.safe_dump({"tasks": tasks, "defaults": {"batch_size": 16}, **top}))
    return path


def make_siglip2(folder: Path) -> Path:
    """A random tiny transformers ``Siglip2Model`` + processor + SigLIP 2 (Gemma-id) tokenizer."""
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

    from siglip_lightning.text.gemma import train_gemma_sentencepiece
    from siglip_lightning.data.synthetic import ShapesSpec, make_pair
    from siglip_lightning.text.hf_gemma import save_gemma_tokenizer

    config = Siglip2Config(
        text_config=dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, eos_token_id=1,
                         bos_token_id=None),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           patch_size=4, num_patches=16))
    torch.manual_seed(0)
    Siglip2Model(config).save_pretrained(folder)
    Siglip2ImageProcessor(patch_size=4, max_num_patches=16).save_pretrained(folder)
    captions = [make_pair(ShapesSpec(num_train=300), "train", i)[1] for i in range(300)]
    save_gemma_tokenizer(train_gemma_sentencepiece(captions, folder.parent / "spm2.model", 350), folder, 16)
    return folder


def fit_run(root: Path) -> Path:
    """A 2-step tiny run on the built-in data, with the two built-in evaluations as callbacks."""
    callbacks = [{"class_path": "siglip_lightning.eval.ZeroShotClassification", "init_args": {"name": "shapes_zeroshot"}},
                 {"class_path": "siglip_lightning.eval.Retrieval", "init_args": {"name": "shapes_retrieval"}},
                 {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}]
    config = root.parent / f"{root.name}-callbacks.yaml"
    config.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    cli_main(tiny_fit_args(root, "--config", str(config), "--seed_everything=0"))
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"run": fit_run(root / "run"), "hf": make_hf_siglip(root / "hf"),
            "siglip2": make_siglip2(root / "siglip2"), "open_clip": make_open_clip_siglip(root / "open_clip")}


def test_builtin_suite_runs_on_each_model_kind(models, tmp_path):
    suite = write_suite(tmp_path / "suite.yaml", builtin=TINY_BUILTIN)
    out = tmp_path / "out"
    records = evaluate([str(p) for p in models.values()], str(suite), str(out), device="cpu")
    assert [r["kind"] for r in records] == ["run", "hf", "siglip2", "open_clip"]
    for record in records:
        folder = out / record["label"]
        saved = json.loads((folder / "results.json").read_text())
        assert {t: set(e["metrics"]) for t, e in saved["tasks"].items()} == METRICS
        rows = list(csv.DictReader((folder / "results.csv").open()))
        assert len(rows) == sum(len(m) for m in METRICS.values())
        assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)
        assert "| shapes_zeroshot | top1 |" in (folder / "results.md").read_text()
    comparison = (out / "comparison.md").read_text()
    assert comparison.splitlines()[0] == "| task | metric | " + " | ".join(r["label"] for r in records) + " |"
    # what leaves works without us: pandas reads the side-by-side table in a process without the package
    read = ("import json, sys, pandas; rows = pandas.read_csv(sys.argv[1]).to_dict('records'); "
            "assert 'siglip_lightning' not in sys.modules; print(json.dumps(rows))")
    done = subprocess.run([sys.executable, "-c", read, str(out / "comparison.csv")], capture_output=True, text=True,
                          cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr[-2000:]
    read_back = {(r["model"], r["task"], r["metric"]): r["value"] for r in json.loads(done.stdout)}
    ours = {(r["label"], t, m): v for r in records for t, e in r["tasks"].items() for m, v in e["metrics"].items()}
    assert read_back == pytest.approx(ours, abs=1e-12)


def test_evaluate_on_a_run_equals_validate_with_the_same_callbacks(models, tmp_path):
    run = models["run"]
    config = next(run.rglob("config.yaml"))
    validate = cli_main(["validate", "--config", str(config), "--ckpt_path", str(config.parent / "checkpoints/last.ckpt"),
                         "--trainer.logger=false"])
    want = {k: float(v) for k, v in validate.trainer.callback_metrics.items() if k.startswith(("zeroshot/", "retrieval/"))}
    (record,) = evaluate([str(run)], str(write_suite(tmp_path / "suite.yaml")), device="cpu")
    got = {f"{'zeroshot' if t == 'shapes_zeroshot' else 'retrieval'}/{t}/{m}": v
           for t, e in record["tasks"].items() for m, v in e["metrics"].items()}
    assert got == pytest.approx(want, abs=1e-7) and len(got) == len(want) == 9


def test_a_siglip_folder_scores_as_transformers_does(models, tmp_path):
    """Zero-shot top-1 on an imagefolder equals transformers' own processor, tokenizer and model."""
    from PIL import Image
    from transformers import AutoProcessor, SiglipModel

    folder = make_imagefolder(tmp_path / "shapes")
    tasks = [{"name": "folder", "task": "zeroshot", "path": str(folder), "templates": ["a photo of a {}."]}]
    (record,) = evaluate([str(models["hf"])], str(write_suite(tmp_path / "suite.yaml", tasks)), device="cpu")
    model, processor = SiglipModel.from_pretrained(models["hf"]).eval(), AutoProcessor.from_pretrained(models["hf"])
    classes = sorted(p.name for p in folder.iterdir())
    files = [(f, classes.index(f.parent.name)) for f in sorted(folder.rglob("*.png"))]
    with torch.no_grad():
        text = processor(text=[f"a photo of a {c}." for c in classes], padding="max_length", return_tensors="pt")
        classifier = F.normalize(model.get_text_features(input_ids=text["input_ids"]).pooler_output, dim=-1)
        pixels = processor(images=[Image.open(f).convert("RGB") for f, _ in files], return_tensors="pt")
        images = F.normalize(model.get_image_features(**pixels).pooler_output, dim=-1)
    labels = torch.tensor([label for _, label in files])
    top1 = float(((images @ classifier.T).argmax(1) == labels).float().mean())
    assert record["tasks"]["folder"]["metrics"]["top1"] == pytest.approx(top1, abs=1e-6)


def _error_line(capsys, args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", *args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("siglip-lightning: error: ")
    return lines[0]


def test_bad_input_gets_one_clear_line(models, tmp_path, capsys):
    missing = [{"name": "imagenet", "task": "zeroshot", "path": str(tmp_path / "no/imagenet/val")}]
    line = _error_line(capsys, ["--model", str(models["hf"]), "--suite", str(write_suite(tmp_path / "a.yaml", missing))])
    assert "task 'imagenet': path not found" in line
    folder = make_imagefolder(tmp_path / "shapes", per_class=1)  # 12 classes
    wrong = [{"name": "f", "task": "zeroshot", "path": str(folder), "class_names": ["a", "b"]}]
    line = _error_line(capsys, ["--model", str(models["hf"]), "--suite", str(write_suite(tmp_path / "b.yaml", wrong))])
    assert "2 class_names given" in line and "12 classes" in line
    shuffled = [{"name": "f", "task": "zeroshot", "path": str(folder),
                 "class_names": sorted(p.name for p in folder.iterdir())[::-1]}]
    line = _error_line(capsys, ["--model", str(models["hf"]), "--suite", str(write_suite(tmp_path / "c.yaml", shuffled))])
    assert "not in the data set's label order" in line
    (tmp_path / "weird").mkdir()
    (tmp_path / "weird" / "weights.bin").write_bytes(b"0")
    line = _error_line(capsys, ["--model", str(tmp_path / "weird"), "--suite", str(write_suite(tmp_path / "d.yaml"))])
    assert "unknown model kind" in line


def _tar(path: Path, members: dict) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_webdataset_tasks_score_as_the_same_images_in_folder_and_karpathy_layouts(models, tmp_path):
    """A class field (``.cls``) and a json caption list (``.json``) in webdataset shards give the numbers of
    the same images as an imagefolder and as a Karpathy split."""
    from tests.helpers.eval_data import make_karpathy_json

    folder = make_imagefolder(tmp_path / "shapes")
    classes = sorted(p.name for p in folder.iterdir())
    members = {}
    for index, file in enumerate(sorted(folder.rglob("*.png"))):
        members[f"{index:05d}.png"] = file.read_bytes()
        members[f"{index:05d}.cls"] = str(classes.index(file.parent.name)).encode()
    (tmp_path / "wds").mkdir()
    _tar(tmp_path / "wds" / "test-0.tar", members)
    split = make_karpathy_json(tmp_path / "coco", num_test=12)
    members = {}
    for index, entry in enumerate(e for e in json.loads(split.read_text())["images"] if e["split"] == "test"):
        members[f"{index:05d}.png"] = (split.parent / entry["filepath"] / entry["filename"]).read_bytes()
        members[f"{index:05d}.json"] = json.dumps({"captions": [s["raw"] for s in entry["sentences"]]}).encode()
    (tmp_path / "wds_captions").mkdir()
    _tar(tmp_path / "wds_captions" / "test-0.tar", members)
    tasks = [{"name": "folder", "task": "zeroshot", "path": str(folder), "templates": "simple"},
             {"name": "wds", "task": "zeroshot", "path": str(tmp_path / "wds"), "image_column": "png",
              "label_column": "cls", "class_names": classes, "templates": "simple"},
             {"name": "karpathy", "task": "retrieval", "path": str(split)},
             {"name": "wds_captions", "task": "retrieval", "path": str(tmp_path / "wds_captions"),
              "caption_column": "json.captions"}]
    (record,) = evaluate([str(models["hf"])], str(write_suite(tmp_path / "suite.yaml", tasks)), device="cpu")
    metrics = {name: entry["metrics"] for name, entry in record["tasks"].items()}
    assert metrics["wds"] == metrics["folder"] and metrics["wds_captions"] == metrics["karpathy"]
    assert 0 < metrics["karpathy"]["image_to_text_R@5"] < 1


def test_a_lone_checkpoint_evaluates_from_the_settings_saved_inside_it(models, tmp_path):
    import shutil

    lone = tmp_path / "elsewhere" / "model.ckpt"
    lone.parent.mkdir()
    shutil.copy(next(models["run"].rglob("last.ckpt")), lone)
    suite = str(write_suite(tmp_path / "suite.yaml", builtin=TINY_BUILTIN))
    (alone,) = evaluate([str(lone)], suite, device="cpu")
    (in_run,) = evaluate([str(models["run"])], suite, device="cpu")
    assert alone["kind"] == "run" and all(alone["tasks"][t]["metrics"] == in_run["tasks"][t]["metrics"] for t in METRICS)


def test_a_siglip2_folder_without_its_tokenizer_file_is_refused(models, tmp_path, capsys):
    import shutil

    folder = shutil.copytree(models["siglip2"], tmp_path / "siglip2")
    for name in ("tokenizer.model", "tokenizer.json", "spiece.model"):
        (folder / name).unlink(missing_ok=True)
    line = _error_line(capsys, ["--model", str(folder), "--suite", str(write_suite(tmp_path / "s.yaml"))])
    assert "has no tokenizer (tokenizer.model, tokenizer.json, spiece.model)" in line and "--model" in line


def test_a_siglip_folder_without_its_tokenizer_files_is_refused(models, tmp_path, capsys):
    import shutil

    folder = shutil.copytree(models["hf"], tmp_path / "siglip")
    for name in ("spiece.model", "tokenizer.json"):
        (folder / name).unlink(missing_ok=True)
    line = _error_line(capsys, ["--model", str(folder), "--suite", str(write_suite(tmp_path / "s.yaml"))])
    assert "has no tokenizer (spiece.model, tokenizer.json)" in line


def test_a_run_folder_with_the_config_below_its_checkpoints_is_found(tmp_path):
    """configs/quickstart.yaml's layout: runs/quickstart/checkpoints/ and runs/quickstart/tb/version_0/config.yaml."""
    from siglip_lightning.eval.models import _run_checkpoint

    run = tmp_path / "quickstart"
    (run / "tb" / "version_0").mkdir(parents=True)
    (run / "tb" / "version_0" / "config.yaml").write_text("model: {}\n")
    assert _run_checkpoint(run) is None
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert _run_checkpoint(run) == run / "checkpoints" / "last.ckpt"
    assert _run_checkpoint(run / "tb") is None  # never above the folder asked for
