"""Fine-tuning a released checkpoint as users do (issue 15): a tiny random transformers ``SiglipModel``
folder and a tiny open_clip SigLIP folder go through ``--pretrained`` -> 20 CLI steps -> export, and
are checked against the original libraries: embeddings at step 0, t' and b, token ids, image tensors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from siglip_lightning.cli import cli_main, main
from siglip_lightning.errors import UserInputError
from siglip_lightning.interop.pretrained_folder import pretrained_settings
from tests.conftest import REPO
from tests.helpers.pretrained_factory import make_hf_siglip, make_open_clip_siglip

TOL = 1e-5
CONFIGS = ["--config", str(REPO / "configs" / "finetune_hf.yaml"),
           "--config", str(REPO / "configs" / "runlocal" / "finetune_hf.yaml")]
CAPTIONS = [
    "A photo of a RED circle!!", "two blue squares, on the left.", "3 cats & 12 dogs: 100% fun?",
    "Café naïve über straße 東京", "   lots   of \t whitespace  here  ", "!!! ... ???", "",
    "a large green triangle above a cat " * 8,  # truncated to the context length
    "the_dog-is running (in) the [park]", "it's a 'quoted' \"caption\"",
]


def _images():
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
                [(16, 16), (37, 23), (200, 311), (9, 64)]]
    pictures.append(Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), "RGBA"))  # on white, as both
    pictures.append(Image.fromarray(rng.integers(0, 256, (50, 50), dtype=np.uint8), "L"))
    pictures.append(Image.fromarray(rng.integers(0, 256, (20, 50, 3), dtype=np.uint8)).convert("P"))
    return pictures


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    return make_hf_siglip(tmp_path_factory.mktemp("hf") / "tiny-siglip")


@pytest.fixture(scope="module")
def oc_folder(tmp_path_factory) -> Path:
    return make_open_clip_siglip(tmp_path_factory.mktemp("oc") / "tiny-oc-siglip")


def _build(folder: Path, root: Path, *extra: str):
    """The CLI as ``fit`` builds it (config files + --pretrained + flags), not yet run."""
    cli = cli_main([*CONFIGS, "--pretrained", str(folder), f"--trainer.default_root_dir={root}", *extra], run=False)
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    return cli


def _fit_and_export(cli, out: Path, fmt_args=()) -> Path:
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 20
    ckpt = next(Path(cli.trainer.default_root_dir).rglob("last.ckpt"))
    main(["export", "--ckpt_path", str(ckpt), "--out", str(out), *fmt_args])
    return out


def test_hf_folder_load_finetune_export(hf_folder, tmp_path):
    from transformers import AutoModel, AutoProcessor, SiglipModel

    processor = AutoProcessor.from_pretrained(hf_folder)
    peer = SiglipModel.from_pretrained(hf_folder).eval()
    cli = _build(hf_folder, tmp_path / "run")
    module = cli.model.eval()
    # t' and b at step 0 are the checkpoint's (not log 10 / -10)
    assert module.logit_scale.item() == peer.logit_scale.item() and module.logit_bias.item() == peer.logit_bias.item()
    # token ids: the folder's own tokenizer, on awkward captions, through the datamodule
    expected = processor.tokenizer(CAPTIONS, padding="max_length", max_length=16, truncation=True,
                                   return_tensors="pt")["input_ids"]
    ids = cli.datamodule.tokenizer(CAPTIONS)
    assert torch.equal(ids, expected)
    assert (ids[:, -1] == processor.tokenizer.eos_token_id).all()
    # image tensors: the folder's image processor, on odd sizes and modes, through the datamodule's transforms
    for picture in _images():
        theirs = processor.image_processor(picture, return_tensors="pt")["pixel_values"][0]
        assert (cli.datamodule.eval_transform(picture) - theirs).abs().max() < TOL
        assert (cli.datamodule.image_transform(picture) - theirs).abs().max() < TOL  # no augment configured
    # embeddings at step 0 equal transformers' on those inputs
    pixels = torch.stack([cli.datamodule.eval_transform(p) for p in _images()[:4]])
    with torch.no_grad():
        ours_img, ours_txt = module(pixels, ids[:4])
        out = peer(pixel_values=pixels, input_ids=ids[:4])
    assert (ours_img - out.image_embeds).abs().max() < TOL and (ours_txt - out.text_embeds).abs().max() < TOL
    start = {k: v.detach().clone() for k, v in module.state_dict().items()}
    # 20 steps of fine-tuning, then export back to a folder that transformers loads, processor included
    exported = _fit_and_export(cli, tmp_path / "export")
    # WiSE-FT at alpha 0 rebuilds exactly the step-0 weights from the run's record (--pretrained towers, t', b)
    ckpt = next((tmp_path / "run").rglob("last.ckpt"))
    main(["wise-ft", "--finetuned", str(ckpt), "--alpha", "0", "--out", str(tmp_path / "wise0.ckpt")])
    rebuilt = torch.load(tmp_path / "wise0.ckpt", weights_only=True)["state_dict"]
    assert set(rebuilt) == set(start) and all(torch.equal(rebuilt[k], start[k]) for k in start)
    module = cli.model.eval()
    model = AutoModel.from_pretrained(exported).eval()
    reloaded = AutoProcessor.from_pretrained(exported)
    batch = reloaded(text=CAPTIONS[:4], images=_images()[:4], padding="max_length", max_length=16,
                     truncation=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], expected[:4])
    # SigLIP was trained without a text attention mask (big_vision pools the last token of the padded
    # sequence); transformers 5's processor returns one anyway: leave it out, as our towers do.
    inputs = {"pixel_values": batch["pixel_values"], "input_ids": batch["input_ids"]}
    with torch.no_grad():
        ours_img, ours_txt = module(batch["pixel_values"], batch["input_ids"])
        out = model(**inputs)
        before = peer(**inputs)
    assert (ours_img - out.image_embeds).abs().max() < TOL and (ours_txt - out.text_embeds).abs().max() < TOL
    assert (out.image_embeds - before.image_embeds).abs().max() > 1e-4  # it did train
    assert model.logit_scale.item() == pytest.approx(module.logit_scale.item())


def test_open_clip_folder_load_finetune_export(oc_folder, tmp_path):
    import open_clip

    from siglip_lightning.interop.openclip import create_open_clip

    peer, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{oc_folder}")
    peer.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{oc_folder}")
    cli = _build(oc_folder, tmp_path / "run")
    module = cli.model.eval()
    assert module.logit_scale.item() == peer.logit_scale.item() and module.logit_bias.item() == peer.logit_bias.item()
    ids = cli.datamodule.tokenizer(CAPTIONS)
    assert torch.equal(ids, tokenizer(CAPTIONS))
    for picture in _images():
        assert (cli.datamodule.eval_transform(picture) - preprocess(picture)).abs().max() < TOL
    pixels = torch.stack([preprocess(p) for p in _images()[:4]])
    with torch.no_grad():
        ours_img, ours_txt = module(pixels, ids[:4])
        theirs_img = peer.encode_image(pixels, normalize=True)
        theirs_txt = peer.encode_text(ids[:4], normalize=True)
    assert (ours_img - theirs_img).abs().max() < TOL and (ours_txt - theirs_txt).abs().max() < TOL
    exported = _fit_and_export(cli, tmp_path / "export")
    module = cli.model.eval()
    model = create_open_clip(f"local-dir:{exported}")
    with torch.no_grad():
        ours_img, ours_txt = module(pixels, ids[:4])
        img, txt = model.encode_image(pixels, normalize=True), model.encode_text(ids[:4], normalize=True)
    assert (ours_img - img).abs().max() < TOL and (ours_txt - txt).abs().max() < TOL
    assert torch.equal(open_clip.get_tokenizer(f"local-dir:{exported}")(CAPTIONS), ids)  # tokenizer carried over
    config = json.loads((exported / "open_clip_config.json").read_text())
    assert config["preprocess_cfg"]["interpolation"] == "bicubic"


def test_explicit_settings_win_over_pretrained(hf_folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", *CONFIGS, "--pretrained", str(hf_folder), "--model.init_logit_bias=-3.5",
                  "--data.image_resample=bicubic", "--print_config"])
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["pretrained"] == str(hf_folder)
    assert printed["model"]["init_logit_bias"] == -3.5 and printed["data"]["image_resample"] == "bicubic"
    assert printed["model"]["init_logit_scale"] == pytest.approx(2.1, abs=1e-6)  # the rest from the folder
    assert printed["model"]["image_tower"]["class_path"] == "siglip_lightning.HFVisionTower"
    assert printed["data"]["tokenizer_type"] == "hf" and printed["data"]["image_resize_backend"] == "torchvision"


def test_pretrained_as_a_config_file_key(hf_folder, tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text(f"pretrained: {hf_folder}\ndata:\n  context_length: 12\n")
    with pytest.raises(SystemExit):
        cli_main(["fit", *CONFIGS, "--config", str(config), "--print_config"])
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["text_tower"]["init_args"]["path"] == str(hf_folder)
    assert printed["data"]["context_length"] == 12 and printed["data"]["tokenizer_type"] == "hf"


def test_preprocessor_config_json_layout_is_read_too(hf_folder, tmp_path):
    """Folders saved before transformers 5 (all released SigLIPs) keep the image settings in preprocessor_config.json."""
    import shutil

    old = tmp_path / "old-layout"
    shutil.copytree(hf_folder, old)
    combined = json.loads((old / "processor_config.json").read_text())
    (old / "processor_config.json").unlink()
    (old / "preprocessor_config.json").write_text(json.dumps(dict(combined["image_processor"], resample=3)))
    settings = pretrained_settings(str(old))
    assert settings["data.image_resample"] == "bicubic" and settings["data.image_std"] == [0.2, 0.3, 0.4]


def test_unsupported_folders_are_refused_by_name(tmp_path):
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(UserInputError, match="model_type 'clip' is not supported"):
        pretrained_settings(str(tmp_path / "clip"))
    with pytest.raises(UserInputError, match="not a folder"):
        pretrained_settings(str(tmp_path / "missing"))
