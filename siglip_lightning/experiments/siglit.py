"""The ``prepare: {siglit: ...}`` stage of a sweep: SigLiT at CPU scale with the product's own commands.

The paper's cheapest setting (Zhai et al. 2023, §4.1, Table 8) locks a pre-trained image tower and
trains only a text tower. Here, once per setting (each step skipped when its output exists):

1. ``siglip-lightning fit --config configs/experiments/siglit/image_tower.yaml``: a tiny SigLIP on
   built-in shapes pairs of another seed (disjoint from the sweep's data); its image tower is the
   locked one;
2. ``siglip-lightning cache-embeddings`` with that run's weights (``--model.init_from``) over the
   sweep's built-in data (``num_train`` pairs with ``caption_noise``, ``num_eval`` clean held-out
   pairs), the zero-shot set, and uniform-noise images (for ``data.corruption``);
3. ``siglip-lightning train-tokenizer`` on the cached training captions.

The cells then run ``fit`` with ``configs/experiments/siglit/text_tower.yaml`` on that cache, evaluated
by the ``Retrieval`` and ``ZeroShotClassification`` callbacks on the cached embeddings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from siglip_lightning.config_files import configs_root
from siglip_lightning.data.synthetic import default_data_root
from siglip_lightning.errors import UserInputError

CONFIGS = configs_root() / "experiments" / "siglit"  # packaged: the wheel's copy or the checkout's configs/


@dataclass
class SiglitSetup:
    """The data and the locked image tower of the SigLiT sweeps.

    Args:
        num_train: training pairs of the cells (built-in data, seed 0).
        num_eval: held-out pairs (clean captions) for retrieval.
        caption_noise: fraction of wrong training captions (noisy web pairs).
        zeroshot_per_class: zero-shot images per colour x shape class.
        noise_images: uniform-noise images embedded for the image corruption.
        vocab_size: the cells' BPE vocabulary.
        tower_config: the fit config of the image tower (stage 1).
    """

    num_train: int = 40_000
    num_eval: int = 1_000
    caption_noise: float = 0.3
    zeroshot_per_class: int = 10
    noise_images: int = 1_024
    vocab_size: int = 128
    tower_config: str = str(CONFIGS / "image_tower.yaml")

    def fingerprint(self, *fields: str) -> str:
        values = dataclasses.asdict(self)
        values["tower_config"] = Path(self.tower_config).read_text()
        blob = json.dumps({k: values[k] for k in (fields or sorted(values))}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _run(args: List[str], log: Path, env: Dict[str, str], what: str, say) -> None:
    from siglip_lightning.experiments.runner import fit_command

    say(f"  {what} ...", flush=True)
    started = time.time()
    with log.open("a") as handle:
        handle.write("$ siglip-lightning " + " ".join(args) + "\n")
        handle.flush()
        code = subprocess.call(fit_command() + args, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        tail = "\n    ".join(log.read_text().splitlines()[-15:])
        raise UserInputError(f"{what} failed (exit {code}); the end of {log}:\n    {tail}")
    say(f"  {what}: {time.time() - started:.0f} s", flush=True)


def prepare_siglit(settings: dict, root: Path = None, threads: int = 2, progress: bool = True) -> dict:
    """Build (or reuse) the cache; return the cells' ``overrides`` and eval ``callbacks``."""
    from siglip_lightning.experiments.runner import _env

    setup = SiglitSetup(**(settings or {}))
    root = Path(root) if root else default_data_root() / "siglit"
    say = print if progress else (lambda *a, **k: None)
    env = _env(threads)
    tower_dir = root / f"image_tower-{setup.fingerprint('tower_config')}"
    cache = root / f"cache-{setup.fingerprint()}"
    ckpt = tower_dir / "checkpoints" / "last.ckpt"
    if not (tower_dir / "done").exists():
        tower_dir.mkdir(parents=True, exist_ok=True)
        args = ["fit", "--config", setup.tower_config, f"--trainer.default_root_dir={tower_dir}",
                "--trainer.callbacks+=" + json.dumps({"class_path": "siglip_lightning.checkpointing.ResumableCheckpoint",
                                                     "init_args": {"save_last": True, "save_top_k": 0}})]
        _run(args, tower_dir / "fit.log", env, f"SigLiT stage 1/3: image tower (fit) -> {tower_dir}", say)
        (tower_dir / "done").write_text("")
    if not (cache / "done").exists():
        shutil.rmtree(cache, ignore_errors=True)  # a half-written cache is rebuilt
        cache.mkdir(parents=True)
        args = ["cache-embeddings", "--config", setup.tower_config, f"--model.init_from={ckpt}",
                "--data.builtin.seed=0", f"--data.builtin.num_train={setup.num_train}",
                f"--data.builtin.num_validation={setup.num_eval}", f"--data.builtin.caption_noise={setup.caption_noise}",
                f"--data.builtin.zeroshot_per_class={setup.zeroshot_per_class}", "--data.seed=0",
                f"--out={cache / 'pairs'}", f"--zeroshot_out={cache / 'zeroshot'}", f"--noise_out={cache / 'noise'}",
                f"--noise_images={setup.noise_images}", "--device=cpu"]
        _run(args, cache / "prepare.log", env, "SigLiT stage 2/3: cache-embeddings of the sweep data", say)
        args = ["train-tokenizer", f"--data.path={cache / 'pairs'}", f"--vocab_size={setup.vocab_size}",
                f"--out={cache / 'tokenizer.model'}"]
        _run(args, cache / "prepare.log", env, "SigLiT stage 3/3: train-tokenizer", say)
        (cache / "done").write_text(json.dumps(dataclasses.asdict(setup), indent=1))
    say(f"SigLiT cache: {cache}", flush=True)
    templates = (cache / "zeroshot_templates.txt").read_text().split("\n")
    return {
        "overrides": {"data.path": str(cache / "pairs"), "data.tokenizer_path": str(cache / "tokenizer.model"),
                      "data.corruption.noise_embeddings": str(cache / "noise")},
        "callbacks": [
            {"class_path": "siglip_lightning.eval.Retrieval",
             "init_args": {"name": "heldout", "path": str(cache / "pairs"), "split": "validation",
                           "image_column": "embedding", "caption_column": "text", "ks": [1, 5]}},
            {"class_path": "siglip_lightning.eval.ZeroShotClassification",
             "init_args": {"name": "shapes", "path": str(cache / "zeroshot"), "image_column": "embedding",
                           "templates": [t for t in templates if t]}},
        ],
        "cache": str(cache),
    }
