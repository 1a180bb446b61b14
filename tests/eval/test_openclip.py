"""The eval callbacks on a model initialised from a local open_clip checkpoint, checked against
open_clip's own ``encode_image`` / ``encode_text`` and tokenizer on the same images and prompts."""
from __future__ import annotations

import csv
import glob
import json
from pathlib import Path

import datasets
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch import Trainer

from siglip_lightning import SigLIPModule
from siglip_lightning.data.datamodule import ImageTextDataModule
from siglip_lightning.data.synthetic import ShapesSpec
from siglip_lightning.errors import UserInputError
from siglip_lightning.eval import Retrieval, ZeroShotClassification
from siglip_lightning.interop.openclip import register_timm_vit, timm_name
from siglip_lightning.interop.pretrained_towers import OpenCLIPTextTower, OpenCLIPVisionTower
from tests.conftest import run_cli

CONTEXT = 16


def _tiny_open_clip(tmp_path: Path):
    """A tiny SigLIP-layout open_clip model with the CLIP BPE vocabulary, random weights saved to a file."""
    import open_clip

    shape = dict(image_size=16, patch_size=8, width=32, layers=1, heads=2, mlp_ratio=2.0, norm_eps=1e-6)
    name = "tiny-evalclip-test"
    cfg = {"embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
           "vision_cfg": {"image_size": 16, "timm_model_name": register_timm_vit(timm_name(shape)),
                          "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
           "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                        "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                        "act_kwargs": {"approximate": "tanh"}, "norm_kwargs": {"eps": 1e-6}}}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "configs")
    torch.manual_seed(5)
    peer = open_clip.create_model(name)
    with torch.no_grad():  # non-default values everywhere, so nothing hides behind init
        for p in peer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ckpt = tmp_path / "tiny_open_clip.pt"
    torch.save(peer.state_dict(), ckpt)
    return name, ckpt


def _rows(folder: Path, pattern: str) -> datasets.Dataset:
    return datasets.load_dataset("parquet", data_files=sorted(glob.glob(str(folder / pattern))), split="train")


def _open_clip_ids(tokenizer, texts):
    """open_clip's tokenizer pads with 0; the datamodule's ``clip`` tokenizer pads with <end_of_text>
    so that the last position (pooled by SigLIP-layout towers) is always the end token."""
    ids = tokenizer(texts)
    return torch.where(ids == 0, torch.full_like(ids, tokenizer.eot_token_id), ids)


SPEC = dict(num_train=32, num_validation=64, zeroshot_per_class=2, num_shards=1, image_size=16)
DATA = dict(batch_size=16, num_workers=0, image_size=16, context_length=CONTEXT, tokenizer_type="clip",
            shuffle_buffer=16)


def expected_metrics(name: str, ckpt: Path, datamodule: ImageTextDataModule):
    """Zero-shot top-1/5 and Recall@1/5 computed by hand from open_clip's model and tokenizer."""
    import open_clip

    peer = open_clip.create_model(name, load_weights=False)
    open_clip.load_checkpoint(peer, str(ckpt), strict=True)
    peer.eval()
    tokenizer = open_clip.get_tokenizer(name)
    datamodule.setup("validate")
    root = datamodule.builtin_root
    meta = json.loads((root / "zeroshot_classes.json").read_text())
    prompts = [t.format(c) for c in meta["class_names"] for t in meta["templates"]]
    # The datamodule's tokenizer gives open_clip's ids (up to the pad token, see _open_clip_ids).
    assert torch.equal(datamodule.tokenizer(prompts), _open_clip_ids(tokenizer, prompts))
    shots = _rows(root / "zeroshot", "*.parquet")
    labels = torch.tensor(shots["label"])
    with torch.no_grad():
        images = torch.stack([datamodule.eval_transform(im) for im in shots["image"]])
        image_emb = peer.encode_image(images, normalize=True)
        text_emb = peer.encode_text(_open_clip_ids(tokenizer, prompts), normalize=True)
    classifier = F.normalize(text_emb.view(len(meta["class_names"]), len(meta["templates"]), -1).mean(1), dim=-1)
    ranked = (image_emb @ classifier.T).topk(5, dim=-1).indices
    zeroshot = {"top1": (ranked[:, 0] == labels).float().mean().item(),
                "top5": (ranked == labels[:, None]).any(-1).float().mean().item()}
    assert zeroshot["top5"] > zeroshot["top1"]  # the check has something to tell apart

    pairs = _rows(root / "pairs", "validation-*.parquet")  # one caption per image
    with torch.no_grad():
        image_emb = peer.encode_image(torch.stack([datamodule.eval_transform(im) for im in pairs["image"]]),
                                      normalize=True)
        text_emb = peer.encode_text(_open_clip_ids(tokenizer, pairs["text"]), normalize=True)
    scores = image_emb @ text_emb.T
    truth = torch.arange(len(pairs))
    retrieval = {}
    for k in (1, 5):
        retrieval[f"image_to_text_R@{k}"] = (scores.topk(k, 1).indices == truth[:, None]).any(-1).float().mean().item()
        retrieval[f"text_to_image_R@{k}"] = (scores.T.topk(k, 1).indices == truth[:, None]).any(-1).float().mean().item()
    return zeroshot, retrieval


def assert_close(got, expected, where):
    for key, value in expected.items():
        assert abs(float(got[key]) - value) < 1e-6, (where, key, dict(got), expected)


def test_callbacks_on_open_clip_checkpoint_match_open_clip(tmp_path):
    name, ckpt = _tiny_open_clip(tmp_path)
    datamodule = ImageTextDataModule(**DATA, cache_dir=str(tmp_path / "data"), builtin=ShapesSpec(**SPEC))
    module = SigLIPModule(OpenCLIPVisionTower(name, str(ckpt)), OpenCLIPTextTower(name, str(ckpt)))
    zeroshot = ZeroShotClassification(name="builtin", batch_size=40)
    retrieval = Retrieval(name="pairs", path="builtin", batch_size=24, ks=[1, 5])
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, limit_val_batches=1, callbacks=[zeroshot, retrieval],
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.validate(module, datamodule=datamodule)
    expected_zs, expected_ret = expected_metrics(name, ckpt, datamodule)
    assert_close(zeroshot.last_metrics, expected_zs, "zeroshot")
    assert_close(retrieval.last_metrics, expected_ret, "retrieval")


def test_cli_validate_open_clip_local_dir(tmp_path):
    """What a user runs: ``validate`` with the open_clip towers pointed at a ``local-dir:`` folder
    (its ``open_clip_config.json``) and a separate weights file, no Lightning checkpoint."""
    name, ckpt = _tiny_open_clip(tmp_path)
    import open_clip

    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip.get_model_config(name)}))
    callbacks = [{"class_path": "siglip_lightning.eval.ZeroShotClassification",
                  "init_args": {"name": "builtin", "batch_size": 40}},
                 {"class_path": "siglip_lightning.eval.Retrieval",
                  "init_args": {"name": "pairs", "path": "builtin", "batch_size": 24, "ks": [1, 5]}}]
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path / "logs")}}
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"trainer": {"logger": logger, "callbacks": callbacks}}))
    towers = [f"--model.{side}_tower=siglip_lightning.OpenCLIP{kind}Tower" for side, kind in
              (("image", "Vision"), ("text", "Text"))]
    towers += [f"--model.{side}_tower.init_args.{key}={value}" for side in ("image", "text")
               for key, value in (("model_name", f"local-dir:{folder}"), ("checkpoint_path", ckpt))]
    data = [f"--data.{key}={value}" for key, value in DATA.items()]
    data += [f"--data.builtin.{key}={value}" for key, value in SPEC.items()] + [f"--data.cache_dir={tmp_path / 'data'}"]
    result = run_cli(["validate", "--config", str(config), *towers, *data, "--trainer.accelerator=cpu",
                      "--trainer.devices=1", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
                      f"--trainer.default_root_dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(next((tmp_path / "logs").rglob("metrics.csv")).open()))
    logged = {k: v for row in rows for k, v in row.items() if v}
    datamodule = ImageTextDataModule(**DATA, cache_dir=str(tmp_path / "data"), builtin=ShapesSpec(**SPEC))
    expected_zs, expected_ret = expected_metrics(name, ckpt, datamodule)
    assert_close({k.split("/")[-1]: v for k, v in logged.items() if k.startswith("zeroshot/builtin/")},
                 expected_zs, "cli zeroshot")
    assert_close({k.split("/")[-1]: v for k, v in logged.items() if k.startswith("retrieval/pairs/")},
                 expected_ret, "cli retrieval")


def test_classic_clip_layout_is_refused_with_a_clear_error(tmp_path):
    """open_clip's own CLIP layout (class-token ViT, causal text pooled at argmax) is not what the
    towers hold: loading it must say so rather than load something else."""
    import open_clip

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1,
                          "head_width": 16},
           "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny-classic-clip-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "configs")
    with pytest.raises(UserInputError, match="MAP pooling"):
        OpenCLIPVisionTower("tiny-classic-clip-test")
    with pytest.raises(UserInputError, match="bidirectional"):
        OpenCLIPTextTower("tiny-classic-clip-test")
