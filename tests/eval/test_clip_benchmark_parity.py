"""``siglip-lightning evaluate`` against the field's own code: CLIP_benchmark's zero-shot classification
and retrieval, run on the same open_clip model, images and captions, give our numbers exactly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

clip_benchmark = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")

from siglip_lightning.commands.evaluate import evaluate  # noqa: E402
from tests.helpers.eval_data import make_imagefolder, make_karpathy_json  # noqa: E402
from tests.helpers.pretrained_factory import make_open_clip_siglip  # noqa: E402

TEMPLATES = ["a photo of a {c}.", "itap of a {c}.", "a {c} in a video game."]


def numpy2_safe_accuracy(output, target, topk=(1,)):
    """CLIP_benchmark's ``accuracy`` (same formula); its ``float()`` of a 1-element array fails on numpy >= 2.4."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum()) / len(target) for k in topk]


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    """The open_clip model as open_clip itself loads it, with its tokenizer and eval preprocessing."""
    import open_clip

    from siglip_lightning.interop.openclip import create_open_clip

    folder = make_open_clip_siglip(tmp_path_factory.mktemp("oc") / "model", image_size=32)
    name = f"local-dir:{folder}"
    create_open_clip(name)  # registers the timm tower name open_clip needs (until exports load in plain open_clip)
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    return folder, model.eval(), open_clip.get_tokenizer(name), preprocess


def test_zeroshot_classification_equals_clip_benchmark(peer, tmp_path, monkeypatch):
    from torchvision.datasets import ImageFolder

    folder, model, tokenizer, preprocess = peer
    images = make_imagefolder(tmp_path / "shapes", per_class=3)
    monkeypatch.setattr(clip_benchmark, "accuracy", numpy2_safe_accuracy)
    dataset = ImageFolder(str(images), transform=preprocess)
    loader = torch.utils.data.DataLoader(dataset, batch_size=7)
    want = clip_benchmark.evaluate(model, loader, tokenizer, dataset.classes, TEMPLATES, "cpu", amp=False)
    task = {"name": "shapes", "task": "zeroshot", "path": str(images),
            "templates": [t.replace("{c}", "{}") for t in TEMPLATES], "batch_size": 5}
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"tasks": [task]}))
    (record,) = evaluate([str(folder)], str(suite), device="cpu")
    got = record["tasks"]["shapes"]["metrics"]
    assert 0 < want["acc1"] < 1 and want["acc5"] > want["acc1"]  # informative: neither all right nor all wrong
    assert got["top1"] == pytest.approx(want["acc1"], abs=1e-6)  # torchmetrics counts in float32: the same hits
    assert got["top5"] == pytest.approx(want["acc5"], abs=1e-6)  # torchmetrics counts in float32: the same hits


def test_retrieval_equals_clip_benchmark(peer, tmp_path):
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_retrieval
    from PIL import Image

    folder, model, tokenizer, preprocess = peer
    split = make_karpathy_json(tmp_path / "coco", num_test=30)
    entries = [e for e in json.loads(split.read_text())["images"] if e["split"] == "test"]
    items = [(preprocess(Image.open(split.parent / e["filepath"] / e["filename"]).convert("RGB")),
              [s["raw"] for s in e["sentences"]]) for e in entries]
    loader = torch.utils.data.DataLoader(items, batch_size=8, collate_fn=image_captions_collate_fn)
    want = zeroshot_retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    task = {"name": "coco", "task": "retrieval", "path": str(split), "batch_size": 6}
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"tasks": [task]}))
    (record,) = evaluate([str(folder)], str(suite), device="cpu")
    got = record["tasks"]["coco"]["metrics"]
    assert 0 < want["image_retrieval_recall@5"] < 1
    for k in (1, 5, 10):  # CLIP_benchmark's "image retrieval" is text -> image
        assert got[f"text_to_image_R@{k}"] == pytest.approx(want[f"image_retrieval_recall@{k}"], abs=1e-6)
        assert got[f"image_to_text_R@{k}"] == pytest.approx(want[f"text_retrieval_recall@{k}"], abs=1e-6)
