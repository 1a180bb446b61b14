"""Corrupted training pairs (paper Fig. 7): images, texts or the pairing, each with probability ``p``.

A data option any run can use (``data.corruption``); the datamodule applies it to every training
batch before it reaches the model, never to validation. The draws depend on ``(seed, global step)``
only, so a resumed run corrupts exactly the batches the uninterrupted one would have.

- ``image``: the image becomes uniform noise (pixels in [-1, 1]); on cached embeddings
  (SigLiT), the embedding of a uniform-noise image drawn from ``noise_embeddings`` (a folder
  ``cache-embeddings --noise_out`` wrote);
- ``text``: the caption becomes random tokens of random length, ending with EOS (the pooled token);
- ``pairing``: the captions of the selected examples are shuffled among themselves;
- ``all``: the three at once, each with probability ``p``.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

KINDS = ("none", "image", "text", "pairing", "all")


@dataclass
class Corruption:
    """Training-pair corruption (paper Fig. 7).

    Args:
        kind: ``none``, ``image``, ``text``, ``pairing`` or ``all``.
        p: probability that an example (its image, text or pairing) is corrupted.
        noise_embeddings: folder of parquet files with an ``embedding`` column (embedded noise
            images) used for ``image`` on cached embeddings.
        seed: seed of the draws (combined with the global step).
    """

    kind: str = "none"
    p: float = 0.0
    noise_embeddings: Optional[str] = None
    seed: int = 0

    def __post_init__(self) -> None:
        from siglip_lightning.errors import UserInputError

        if self.kind not in KINDS:
            raise UserInputError(f"data.corruption.kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 <= self.p <= 1.0:
            raise UserInputError(f"data.corruption.p must be in [0, 1], got {self.p}")
        self._bank: Optional[torch.Tensor] = None

    @property
    def active(self) -> bool:
        return self.kind != "none" and self.p > 0

    def noise_bank(self) -> torch.Tensor:
        from siglip_lightning.errors import UserInputError

        if self._bank is None:
            import pyarrow.parquet as pq

            files = sorted(glob.glob(os.path.join(os.path.expanduser(self.noise_embeddings or ""), "*.parquet")))
            if not files:
                raise UserInputError("data.corruption kind image on cached embeddings needs "
                                     "data.corruption.noise_embeddings: a folder written by cache-embeddings "
                                     f"--noise_out (got {self.noise_embeddings!r})")
            rows = [r for f in files for r in pq.read_table(f, columns=["embedding"]).column(0).to_pylist()]
            self._bank = torch.tensor(rows, dtype=torch.float32)
        return self._bank

    def __call__(self, batch: Dict[str, Any], step: int, vocab_size: int, eos_id: int) -> Dict[str, Any]:
        """A corrupted copy of a training batch ``{"image", "text", ...}``."""
        if not self.active:
            return batch
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        images, texts = batch["image"], batch["text"]
        n, p = images.shape[0], self.p
        if self.kind in ("image", "all"):
            hit = torch.rand(n, generator=generator) < p
            images = images.clone()
            if images.ndim == 2:  # cached embeddings
                bank = self.noise_bank()
                if bank.shape[1] != images.shape[1]:
                    raise ValueError(f"noise embeddings have width {bank.shape[1]}, the data {images.shape[1]}")
                images[hit] = bank[torch.randint(0, bank.shape[0], (int(hit.sum()),), generator=generator)]
            else:
                noise = torch.rand((int(hit.sum()), *images.shape[1:]), generator=generator) * 2 - 1
                images[hit] = noise.to(images.dtype)
        if self.kind in ("text", "all"):
            hit = torch.rand(n, generator=generator) < p
            k, length = int(hit.sum()), texts.shape[1]
            random_ids = torch.randint(2, max(3, vocab_size), (k, length), generator=generator)
            ends = torch.randint(2, max(3, length), (k, 1), generator=generator)
            random_ids[torch.arange(length).expand(k, -1) >= ends] = eos_id
            texts = texts.clone()
            texts[hit] = random_ids.to(texts.dtype)
        if self.kind in ("pairing", "all"):
            chosen = (torch.rand(n, generator=generator) < p).nonzero().flatten()
            texts = texts.clone()
            texts[chosen] = texts[chosen[torch.randperm(chosen.numel(), generator=generator)]]
        return {**batch, "image": images, "text": texts}
