"""The table of checkpoint families (interop/pretrained_folder.FAMILIES) as the commands use it:
``wise-ft`` rebuilds the start of a SigLIP 2 ``--pretrained`` fine-tune, and one ``--pretrained`` fit
reads the folder's weight files once, whatever the family."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from siglip_lightning.cli import cli_main, main  # noqa: E402
from siglip_lightning.interop import read_once  # noqa: E402
from siglip_lightning.interop.pretrained_folder import FAMILIES, released_source  # noqa: E402
from tests.conftest import REPO, TINY_DATA, TINY_TRAINER  # noqa: E402
from tests.helpers.pretrained_factory import make_hf_siglip, make_hf_siglip2, make_open_clip_siglip  # noqa: E402

SIGLIP_CONFIGS = ["--config", str(REPO / "configs" / "finetune_hf.yaml"),
                  "--config", str(REPO / "configs" / "runlocal" / "finetune_hf.yaml"), "--trainer.max_steps=2",
                  "--trainer.val_check_interval=2"]
NAFLEX_ARGS = [*TINY_DATA, *TINY_TRAINER, "--data.builtin.max_aspect=2.0", "--data.batch_size=8",
               "--data.num_workers=0"]


@pytest.fixture(scope="module")
def siglip2_folder(tmp_path_factory) -> Path:
    return make_hf_siglip2(tmp_path_factory.mktemp("siglip2") / "tiny-siglip2")


def test_wise_ft_rebuilds_both_ends_of_a_siglip2_finetune(siglip2_folder, tmp_path):
    cli = cli_main([*NAFLEX_ARGS, "--model.lr=1e-3", "--model.warmup_steps=0", "--pretrained", str(siglip2_folder),
                    f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.logger=false"], run=False)
    start = {k: v.detach().clone() for k, v in cli.model.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    tuned = torch.load(ckpt, weights_only=True)["state_dict"]
    assert any(not torch.equal(tuned[k], start[k]) for k in start)  # it did train
    for alpha, expected in ((0, start), (1, tuned)):
        out = tmp_path / f"wise{alpha}.ckpt"
        main(["wise-ft", "--finetuned", str(ckpt), "--alpha", str(alpha), "--out", str(out)])
        rebuilt = torch.load(out, weights_only=True)["state_dict"]
        assert set(rebuilt) == set(expected)
        assert all(torch.equal(rebuilt[k], expected[k]) for k in expected), f"alpha {alpha}"
    # export finds the family (and format) from the same table, and carries the folder's processor
    check_export(cli, ckpt, siglip2_folder, tmp_path / "export")


def check_export(cli, ckpt: Path, folder: Path, out: Path) -> None:
    from transformers import AutoProcessor, Siglip2Model

    main(["export", "--ckpt_path", str(ckpt), "--out", str(out)])  # no --format: the source's
    model = Siglip2Model.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    captions = ["a large red circle", "two small blue squares, left of a star."]
    ids = processor.tokenizer(captions, padding="max_length", max_length=16, truncation=True,
                              return_tensors="pt")["input_ids"]
    assert torch.equal(ids, AutoProcessor.from_pretrained(folder).tokenizer(
        captions, padding="max_length", max_length=16, truncation=True, return_tensors="pt")["input_ids"])
    module = cli.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(module.text_tower(ids), model.get_text_features(input_ids=ids).pooler_output,
                                   atol=1e-5, rtol=1e-5)


def _count_weight_reads(monkeypatch, folder: Path) -> list:
    """Every opening of a weight file in ``folder`` through safetensors (load_file and transformers /
    open_clip all go through ``safetensors.torch.safe_open``) or torch.load."""
    import safetensors.torch

    reads = []
    real_open, real_load = safetensors.torch.safe_open, torch.load

    def counted_open(filename, *args, **kwargs):
        if Path(filename).resolve().parent == folder.resolve():
            reads.append(Path(filename).name)
        return real_open(filename, *args, **kwargs)

    def counted_load(f, *args, **kwargs):
        if isinstance(f, (str, Path)) and Path(f).resolve().parent == folder.resolve():
            reads.append(Path(f).name)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "safe_open", counted_open)
    monkeypatch.setattr(torch, "load", counted_load)
    return reads


@pytest.mark.parametrize("family", ["siglip", "siglip2", "open_clip"])
def test_one_pretrained_fit_reads_the_weights_once(family, siglip2_folder, tmp_path, monkeypatch):
    if family == "siglip":
        folder, args = make_hf_siglip(tmp_path / "tiny-siglip"), SIGLIP_CONFIGS
    elif family == "open_clip":
        folder, args = make_open_clip_siglip(tmp_path / "tiny-oc"), SIGLIP_CONFIGS
    else:
        folder, args = siglip2_folder, NAFLEX_ARGS
    read_once.forget()  # nothing left over from an earlier test in this process
    reads = _count_weight_reads(monkeypatch, folder)
    cli = cli_main(["fit", *args, "--pretrained", str(folder), f"--trainer.default_root_dir={tmp_path / 'run'}",
                    "--trainer.logger=false"])
    assert cli.trainer.global_step == 2
    assert released_source(cli.model.hparams)[0] == family
    assert len(reads) == 1, reads


def test_every_family_names_public_towers():
    import siglip_lightning

    for family in FAMILIES.values():
        for name in (family.image_tower, family.text_tower):
            assert name in siglip_lightning.__all__ and isinstance(getattr(siglip_lightning, name), type)
    locked = {"class_path": "siglip_lightning.LockedTower",
              "init_args": {"tower": {"class_path": "siglip_lightning.HFVisionTower", "init_args": {"path": "/m"}}}}
    siglit = {"image_tower": locked, "text_tower": {"class_path": "siglip_lightning.TextTower"}}
    assert released_source(siglit) == ("siglip", "/m")
    assert released_source(siglit, both_towers=True) is None  # its text is not the folder's: no processor to carry
    assert released_source({"image_tower": {"class_path": "siglip_lightning.VisionTower"}}) is None


def test_an_open_clip_folder_with_bin_weights_gives_the_same_towers(tmp_path):
    """open_clip's older folders hold ``open_clip_pytorch_model.bin``: towers, t' and b come from it too."""
    import shutil

    from safetensors.torch import load_file

    from siglip_lightning.interop.pretrained_folder import pretrained_settings
    from siglip_lightning.interop.pretrained_towers import OpenCLIPTextTower, OpenCLIPVisionTower

    folder = make_open_clip_siglip(tmp_path / "tiny-oc")
    old = tmp_path / "tiny-oc-bin"
    shutil.copytree(folder, old)
    torch.save(load_file(str(old / "open_clip_model.safetensors")), old / "open_clip_pytorch_model.bin")
    (old / "open_clip_model.safetensors").unlink()
    settings, expected = pretrained_settings(str(old)), pretrained_settings(str(folder))
    assert (settings["model.init_logit_scale"], settings["model.init_logit_bias"]) == \
        (expected["model.init_logit_scale"], expected["model.init_logit_bias"])
    for tower in (OpenCLIPVisionTower, OpenCLIPTextTower):
        ours, theirs = tower(f"local-dir:{old}").state_dict(), tower(f"local-dir:{folder}").state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_tower_init_args_without_a_class_path_go_to_the_folders_towers(tmp_path, capsys):
    """``init_args`` for the towers (flag or config file) refine the folder's towers, as any other setting."""
    import yaml

    folder = make_hf_siglip(tmp_path / "tiny-siglip")
    mine = tmp_path / "mine.yaml"
    mine.write_text("model:\n  text_tower:\n    init_args:\n      grad_checkpointing: true\n")
    with pytest.raises(SystemExit):
        cli_main(["fit", *SIGLIP_CONFIGS, "--config", str(mine), "--pretrained", str(folder),
                  "--model.image_tower.init_args.grad_checkpointing=true", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)["model"]
    for key, name in (("image_tower", "HFVisionTower"), ("text_tower", "HFTextTower")):
        assert printed[key] == {"class_path": f"siglip_lightning.{name}",
                                "init_args": {"path": str(folder), "grad_checkpointing": True}}


def test_the_parse_stand_in_takes_every_family_towers_arguments():
    import inspect

    import siglip_lightning
    from siglip_lightning.interop.pretrained_folder import AnyFolderTower

    stand_in = set(inspect.signature(AnyFolderTower).parameters)
    for family in FAMILIES.values():
        for name in (family.image_tower, family.text_tower):
            assert set(inspect.signature(getattr(siglip_lightning, name)).parameters) <= stand_in, name
