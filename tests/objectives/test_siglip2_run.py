"""The SigLIP 2 recipe end to end: its export loads in transformers (objectives, heads and teacher left
behind) with the same embeddings; a resumed run has the teacher it would have had without a stop."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from siglip_lightning.cli import cli_main
from siglip_lightning.interop.export import load_checkpoint
from tests.conftest import REPO, run_cli

CONFIGS = REPO / "configs"
RECIPE = ["--config", str(CONFIGS / "siglip2.yaml"), "--config", str(CONFIGS / "runlocal" / "siglip2.yaml")]

# Runs in a process that never imports siglip_lightning: transformers alone reads the export.
PEER = """
import json, sys, torch
from transformers import SiglipModel
folder, inputs, out = sys.argv[1:]
model = SiglipModel.from_pretrained(folder, local_files_only=True).eval()
data = torch.load(inputs)
with torch.no_grad():
    result = model(pixel_values=data["images"], input_ids=data["text"])
torch.save({"image": result.image_embeds, "text": result.text_embeds, "imported": "siglip_lightning" in sys.modules}, out)
"""


def test_export_of_a_run_with_every_objective_loads_in_transformers(tmp_path):
    cli = cli_main(["fit", *RECIPE, f"--trainer.default_root_dir={tmp_path / 'run'}"])
    assert bool(cli.model.teacher.initialised) and "train/tips" in cli.trainer.callback_metrics
    ckpt = sorted((tmp_path / "run").rglob("*.ckpt"))[-1]
    out = tmp_path / "hf"
    result = run_cli(["export", "--ckpt_path", str(ckpt), "--format", "hf", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    module, checkpoint = load_checkpoint(str(ckpt))
    assert any(k.startswith("teacher.") for k in checkpoint["state_dict"])  # the checkpoint holds them all
    assert any(k.startswith("objectives.0.decoder.") for k in checkpoint["state_dict"])
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:  # the export only the towers
        keys = list(f.keys())
    assert keys and all(k.startswith(("vision_model.", "text_model.", "logit_")) for k in keys), keys
    gen = torch.Generator().manual_seed(3)
    images, text = torch.randn(4, 3, 16, 16, generator=gen), torch.randint(0, 512, (4, 8), generator=gen)
    torch.save({"images": images, "text": text}, tmp_path / "inputs.pt")
    peer = subprocess.run([sys.executable, "-c", PEER, str(out), str(tmp_path / "inputs.pt"), str(tmp_path / "peer.pt")],
                          capture_output=True, text=True, timeout=300)
    assert peer.returncode == 0, peer.stderr[-3000:]
    theirs = torch.load(tmp_path / "peer.pt")
    assert theirs["imported"] is False
    with torch.no_grad():
        ours_img, ours_txt = module(images, text)
    assert (ours_img - theirs["image"]).abs().max() < 1e-5
    assert (ours_txt - theirs["text"]).abs().max() < 1e-5
    assert json.loads((out / "config.json").read_text())["model_type"] == "siglip"


@pytest.mark.slow  # three CLI fits
def test_resumed_run_restores_the_teacher_bit_exactly(tmp_path):
    four = ["--trainer.max_steps=4", "--trainer.val_check_interval=4", "--trainer.enable_checkpointing=true",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.every_n_train_steps=3", "--trainer.callbacks.save_top_k=-1"]
    whole = cli_main(["fit", *RECIPE, *four, f"--trainer.default_root_dir={tmp_path / 'whole'}"])
    ckpt = next(p for p in (tmp_path / "whole").rglob("*.ckpt") if "step=3" in p.name)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert bool(saved["teacher.initialised"])  # SILC / TIPS started at step 2 of 4 (start 0.5): saved after step 3
    resumed = cli_main(["fit", *RECIPE, *four, f"--trainer.default_root_dir={tmp_path / 'resumed'}",
                        f"--ckpt_path={ckpt}"])
    assert resumed.trainer.global_step == 4
    theirs, ours = whole.model.state_dict(), resumed.model.state_dict()
    teacher_keys = [k for k in ours if k.startswith("teacher.") or k.endswith(".center")]  # + the teacher centres
    assert teacher_keys
    for key in teacher_keys:
        assert torch.equal(ours[key], theirs[key]), key
    assert not torch.equal(saved["teacher.tower.pos_embed"], ours["teacher.tower.pos_embed"])  # it moved since


@pytest.mark.slow  # two processes through the CLI
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_teacher_follows_the_ema_formula_on_two_processes(strategy, tmp_path):
    """Step 0 without teacher; at step 1 it is copied from the student S1, then S1 -> S2 and
    T = m S1 + (1 - m) S2, sharded like the student under FSDP2 (full state dicts in checkpoints)."""
    result = run_cli(["fit", *RECIPE, "--config", str(CONFIGS / "strategies" / f"{strategy}.yaml"),
                      "--trainer.devices=2", f"--trainer.default_root_dir={tmp_path}", "--trainer.val_check_interval=2",
                      "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                      "--trainer.callbacks.every_n_train_steps=1", "--trainer.callbacks.save_top_k=-1"])
    assert result.returncode == 0, result.stderr[-4000:]
    states = {}
    for step in (1, 2):
        ckpt = next(p for p in tmp_path.rglob("*.ckpt") if f"step={step}" in p.name)
        states[step] = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    s1, s2 = states[1], states[2]
    assert not bool(s1["teacher.initialised"]) and bool(s2["teacher.initialised"])
    m = 0.996
    keys = [k for k in s2 if k.startswith("teacher.tower.")]
    assert len(keys) > 10
    for key in keys:
        student = "image_tower." + key.removeprefix("teacher.tower.")
        torch.testing.assert_close(s2[key], m * s1[student] + (1 - m) * s2[student], rtol=1e-5, atol=1e-6)
