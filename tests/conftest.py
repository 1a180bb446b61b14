"""Shared fixtures: an offline environment, a private cache, and a tiny CLI configuration."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

# A built-in dataset small enough to generate in a second or two.
TINY_DATA = [
    "--data.builtin.num_train=512",
    "--data.builtin.num_validation=64",
    "--data.builtin.zeroshot_per_class=2",
    "--data.builtin.num_shards=4",
    "--data.builtin.image_size=32",
]
# Tiny towers on CPU, two steps, no checkpoint unless a test asks for one.
TINY_MODEL = [
    "--model.image_tower=siglip_lightning.VisionTower",
    "--model.image_tower.init_args.image_size=16",
    "--model.image_tower.init_args.patch_size=8",
    "--model.image_tower.init_args.width=32",
    "--model.image_tower.init_args.layers=1",
    "--model.image_tower.init_args.heads=2",
    "--model.text_tower=siglip_lightning.TextTower",
    "--model.text_tower.init_args.vocab_size=256",
    "--model.text_tower.init_args.context_length=8",
    "--model.text_tower.init_args.width=32",
    "--model.text_tower.init_args.layers=1",
    "--model.text_tower.init_args.heads=2",
    "--model.text_tower.init_args.output_dim=32",
    "--model.warmup_steps=1",
    "--data.image_size=16",
    "--data.context_length=8",
    "--data.vocab_size=256",
    "--data.batch_size=16",
    "--data.num_workers=0",
    "--data.shuffle_buffer=64",
]
TINY_TRAINER = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.max_steps=2",
    "--trainer.limit_val_batches=1",
    "--trainer.val_check_interval=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Path:
    """Generated data and tokenizers go to a per-session folder, never to ~/.cache."""
    cache = tmp_path_factory.mktemp("siglip-cache")
    os.environ["SIGLIP_LIGHTNING_CACHE"] = str(cache)
    return cache


def tiny_fit_args(root: Path, *extra: str) -> List[str]:
    """Arguments of a 2-step CPU fit of tiny towers on tiny built-in data, writing under ``root``."""
    return ["fit", *TINY_DATA, *TINY_MODEL, *TINY_TRAINER, f"--trainer.default_root_dir={root}", *extra]


def run_cli(args: List[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m siglip_lightning ARGS`` in a fresh process, as a user would."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "siglip_lightning", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
