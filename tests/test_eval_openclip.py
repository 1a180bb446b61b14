"""The eval callbacks on a model initialised from a local open_clip checkpoint, checked against
open_clip's own ``encode_image`` / ``encode_text`` and tokenizer on the same images and prompts."""
from __future__ import annotations

import glob
import json
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from siglip_lightning import SigLIPModule
from siglip_lightning.data.datamodule import ImageTextDataModule
from siglip_lightning.data.synthetic import ShapesSpec
from siglip_lightning.eval import Retrieval, ZeroShotClassification
from siglip_lightning.interop.openclip import register_timm_vit, timm_name
from siglip_lightning.pretrained import OpenCLIPTextTower, OpenCLIPVisionTower

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


def test_callbacks_on_open_clip_checkpoint_match_open_clip(tmp_path):
    import open_clip

    name, ckpt = _tiny_open_clip(tmp_path)
    datamodule = ImageTextDataModule(
        batch_size=16, num_workers=0, image_size=16, context_length=CONTEXT, tokenizer_type="clip",
        shuffle_buffer=16, cache_dir=str(tmp_path / "data"),
        builtin=ShapesSpec(num_train=32, num_validation=64, zeroshot_per_class=2, num_shards=1, image_size=16))
    module = SigLIPModule(OpenCLIPVisionTower(name, str(ckpt)), OpenCLIPTextTower(name, str(ckpt)))
    zeroshot = ZeroShotClassification(name="builtin", batch_size=40)
    retrieval = Retrieval(name="pairs", path="builtin", batch_size=24, ks=[1, 5])
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, limit_val_batches=1, callbacks=[zeroshot, retrieval],
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.validate(module, datamodule=datamodule)

    # --- the plain computation: open_clip's model and tokenizer, nothing of the callbacks ---------
    peer = open_clip.create_model(name, load_weights=False)
    open_clip.load_checkpoint(peer, str(ckpt), strict=True)
    peer.eval()
    tokenizer = open_clip.get_tokenizer(name)
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
    top1 = (ranked[:, 0] == labels).float().mean().item()
    top5 = (ranked == labels[:, None]).any(-1).float().mean().item()
    got = zeroshot.last_metrics
    assert abs(got["top1"] - top1) < 1e-6 and abs(got["top5"] - top5) < 1e-6, (got, top1, top5)
    assert top5 > top1  # the check has something to tell apart (not all-right, not all-wrong at both)

    pairs = _rows(root / "pairs", "validation-*.parquet")  # one caption per image
    with torch.no_grad():
        image_emb = peer.encode_image(torch.stack([datamodule.eval_transform(im) for im in pairs["image"]]),
                                      normalize=True)
        text_emb = peer.encode_text(_open_clip_ids(tokenizer, pairs["text"]), normalize=True)
    scores = image_emb @ text_emb.T
    truth = torch.arange(len(pairs))
    expected = {}
    for k in (1, 5):
        expected[f"image_to_text_R@{k}"] = (scores.topk(k, dim=1).indices == truth[:, None]).any(-1).float().mean().item()
        expected[f"text_to_image_R@{k}"] = (scores.T.topk(k, dim=1).indices == truth[:, None]).any(-1).float().mean().item()
    got = retrieval.last_metrics
    for key, value in expected.items():
        assert abs(got[key] - value) < 1e-6, (key, got, expected)
