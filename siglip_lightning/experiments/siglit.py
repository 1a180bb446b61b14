"""SigLiT at CPU scale: a locked image tower and cached embeddings of the built-in shapes data.

The paper's cheapest setting (Zhai et al. 2023, §4.1, Table 8) locks a pre-trained image tower and
trains only a text tower from scratch; with the image embeddings precomputed, batches of thousands
cost little. Here the image tower is first trained (image and text towers together, sigmoid loss)
on a *disjoint* draw of the built-in shapes data (another seed), then locked, and its embeddings
of the sweep's training pairs, of held-out pairs and of the zero-shot images are cached on disk.
Every text-tower run then reads only tensors (see :mod:`siglip_lightning.experiments.textrun`).

Everything is a pure function of :class:`SiglitSetup`; the cache file is keyed by its fingerprint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from siglip_lightning.atomic_files import atomic_path
from siglip_lightning.data.synthetic import (
    ZEROSHOT_TEMPLATES, ShapesSpec, default_data_root, make_pair, make_zeroshot_example,
)
from siglip_lightning.data.tokenizer import SentencePieceTokenizer, train_sentencepiece
from siglip_lightning.losses import SigmoidLoss
from siglip_lightning.model.module import SigLIPModule
from siglip_lightning.model.optim import warmup_cosine
from siglip_lightning.towers import TextTower, VisionTower


@dataclass
class SiglitSetup:
    """Knobs of the locked-image-tower stage (data, image tower, tokenizer).

    Args:
        num_train: training pairs of the text-tower runs (their captions carry ``caption_noise``).
        num_eval: held-out pairs (validation split, clean captions) for retrieval R@1.
        zeroshot_per_class: zero-shot images per colour x shape class.
        caption_noise: fraction of wrong training captions (ShapesSpec's knob: noisy web pairs).
        image_size: image side in pixels.
        num_colors: colours in the data (classes = colours x shapes).
        num_shapes: shape kinds in the data.
        vocab_size: SentencePiece vocabulary (BPE; the captions use ~40 words).
        context_length: tokens per caption (16, as in the paper's ablations).
        embed_dim: embedding width of both towers.
        pretrain_pairs: pairs (from another seed: disjoint from the sweep's) to train the image tower.
        pretrain_steps: steps of that image-tower training.
        pretrain_batch: its batch size.
        pretrain_lr: its peak learning rate.
        noise_images: uniform-noise images embedded for the image-corruption study.
        seed: seed of the sweep's data; the image tower's data uses ``seed + 1``.
    """

    num_train: int = 40_000
    num_eval: int = 1_000
    zeroshot_per_class: int = 10
    caption_noise: float = 0.3
    image_size: int = 32
    num_colors: int = 8
    num_shapes: int = 6
    vocab_size: int = 128
    context_length: int = 16
    embed_dim: int = 64
    pretrain_pairs: int = 20_000
    pretrain_steps: int = 400
    pretrain_batch: int = 128
    pretrain_lr: float = 3e-3
    noise_images: int = 1_024
    seed: int = 0

    def fingerprint(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]

    def spec(self, seed: int, caption_noise: float = 0.0, num_train: int = 0) -> ShapesSpec:
        return ShapesSpec(num_train=num_train or self.num_train, num_validation=self.num_eval,
                          zeroshot_per_class=self.zeroshot_per_class, image_size=self.image_size,
                          num_colors=self.num_colors, num_shapes=self.num_shapes,
                          caption_noise=caption_noise, seed=seed)


def _render_chunk(spec: ShapesSpec, noisy: Optional[ShapesSpec], split: str, start: int, stop: int):
    """uint8 images [n, H, W, 3], clean captions and (if ``noisy``) the noisy spec's captions."""
    images, clean, wrong = [], [], []
    for index in range(start, stop):
        png, caption = make_pair(spec, split, index)
        images.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
        clean.append(caption)
        if noisy is not None:  # same image (the noise draw comes after rendering), maybe another caption
            wrong.append(make_pair(noisy, split, index)[1])
    return np.stack(images), clean, wrong


def render_pairs(spec: ShapesSpec, split: str, count: int, noisy: Optional[ShapesSpec] = None,
                 workers: int = 2, desc: str = "") -> Tuple[np.ndarray, List[str], List[str]]:
    """Render ``count`` pairs of ``split`` in ``workers`` processes (the built-in generator)."""
    from tqdm.auto import tqdm

    bounds = np.linspace(0, count, max(2, 4 * workers) + 1).astype(int)
    jobs = [(spec, noisy, split, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(tqdm(pool.map(_render_chunk, *zip(*jobs)), total=len(jobs), desc=desc, leave=False))
    return (np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]],
            [c for p in parts for c in p[2]])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> float [n, 3, H, W] in [-1, 1] (the paper's preprocessing)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def make_text_tower(setup: SiglitSetup, vocab_size: int, width: int = 64, layers: int = 1, heads: int = 4,
                    mlp_ratio: float = 2.0) -> TextTower:
    return TextTower(vocab_size=vocab_size, context_length=setup.context_length, width=width, layers=layers,
                     heads=heads, mlp_ratio=mlp_ratio, output_dim=setup.embed_dim)


def pretrain_image_tower(setup: SiglitSetup, images: torch.Tensor, tokens: torch.Tensor, vocab_size: int,
                         progress: bool = True) -> VisionTower:
    """Train image + text towers with the sigmoid loss (the package's module and loss), return the
    image tower. A plain loop: the data are in-memory tensors, so Lightning adds nothing here."""
    from tqdm.auto import tqdm

    torch.manual_seed(setup.seed + 1)
    vision = VisionTower(image_size=setup.image_size, patch_size=8, width=setup.embed_dim, layers=2, heads=4)
    text = make_text_tower(setup, vocab_size, layers=1)
    module = SigLIPModule(vision, text, SigmoidLoss(), lr=setup.pretrain_lr, warmup_steps=setup.pretrain_steps // 10)
    optimizer = torch.optim.AdamW(module.parameter_groups(), betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, setup.pretrain_steps // 10, setup.pretrain_steps, 0.0))
    generator = torch.Generator().manual_seed(setup.seed + 1)
    bar = tqdm(range(setup.pretrain_steps), desc="image tower", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randint(0, images.shape[0], (setup.pretrain_batch,), generator=generator)
        loss = module.compute_loss({"image": images[idx], "text": tokens[idx]})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.2f}", t=f"{module.logit_scale.exp().item():.1f}")
    return vision.eval().requires_grad_(False)  # locked


@torch.no_grad()
def embed_images(tower: VisionTower, images: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    return torch.cat([torch.nn.functional.normalize(tower(images[i:i + batch]), dim=-1)
                      for i in range(0, images.shape[0], batch)])


def build_siglit_data(setup: SiglitSetup, workers: int = 2, progress: bool = True) -> Dict[str, object]:
    """Render the data, train the tokenizer and the image tower, lock it, embed everything."""
    pre_spec = setup.spec(setup.seed + 1, num_train=setup.pretrain_pairs)
    pre_images, pre_caps, _ = render_pairs(pre_spec, "train", setup.pretrain_pairs, workers=workers,
                                           desc="image-tower pairs")
    spec = setup.spec(setup.seed)
    noisy = setup.spec(setup.seed, caption_noise=setup.caption_noise)
    train_images, clean_caps, noisy_caps = render_pairs(spec, "train", setup.num_train, noisy, workers,
                                                        desc="sweep pairs")
    eval_images, eval_caps, _ = render_pairs(spec, "validation", setup.num_eval, workers=workers,
                                             desc="held-out pairs")
    class_names = spec.class_names
    zs = [make_zeroshot_example(spec, i) for i in range(setup.zeroshot_per_class * len(class_names))]
    zs_images = np.stack([np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png, _ in zs])
    zs_labels = torch.tensor([label for _, label in zs])

    cache = default_data_root() / "siglit"
    model_file = train_sentencepiece(pre_caps + clean_caps + noisy_caps,
                                     cache / f"spm-{setup.fingerprint()}.model", setup.vocab_size)
    tokenizer = SentencePieceTokenizer(model_file, setup.context_length)
    tower = pretrain_image_tower(setup, to_tensor(pre_images), tokenizer(pre_caps), tokenizer.vocab_size, progress)
    noise = np.random.default_rng(setup.seed).integers(0, 256, (setup.noise_images, *train_images.shape[1:]),
                                                       dtype=np.uint8)
    prompts = [t.format(name) for name in class_names for t in ZEROSHOT_TEMPLATES]
    return {
        "setup": dataclasses.asdict(setup),
        "vocab_size": tokenizer.vocab_size,
        "train_image": embed_images(tower, to_tensor(train_images)),
        "train_text_clean": tokenizer(clean_caps),
        "train_text_noisy": tokenizer(noisy_caps),
        "eval_image": embed_images(tower, to_tensor(eval_images)),
        "eval_text": tokenizer(eval_caps),
        "eval_captions": eval_caps,
        "eval_pixels": torch.from_numpy(eval_images[:64]),  # a few, for showing retrievals
        "noise_image": embed_images(tower, to_tensor(noise)),
        "zeroshot_image": embed_images(tower, to_tensor(zs_images)),
        "zeroshot_label": zs_labels,
        "class_names": class_names,
        "prompt_text": tokenizer(prompts),
        "num_templates": len(ZEROSHOT_TEMPLATES),
        "image_tower_state": tower.state_dict(),
    }


def siglit_cache_file(setup: SiglitSetup) -> Path:
    return default_data_root() / "siglit" / f"siglit-{setup.fingerprint()}.pt"


def ensure_siglit_data(setup: SiglitSetup, workers: int = 2, progress: bool = True) -> Path:
    """The cache file for ``setup``, built on first use (written atomically)."""
    path = siglit_cache_file(setup)
    if not path.exists():
        data = build_siglit_data(setup, workers, progress)
        with atomic_path(path) as tmp:
            torch.save(data, tmp)
    return path


def load_siglit_data(path: os.PathLike) -> Dict[str, object]:
    return torch.load(path, weights_only=False)


__all__ = ["SiglitSetup", "build_siglit_data", "ensure_siglit_data", "load_siglit_data", "make_text_tower",
           "render_pairs"]
