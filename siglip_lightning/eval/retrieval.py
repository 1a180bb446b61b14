"""Image <-> text retrieval Recall@K (COCO, Flickr30k, XM3600 style), as a callback."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from lightning.pytorch import LightningModule

from siglip_lightning.errors import UserInputError
from siglip_lightning.eval.base import EvalCallback, EvalContext
from siglip_lightning.eval.captions import CaptionSet, read_caption_set
from siglip_lightning.ranks import rank_and_world
from siglip_lightning.eval.gather import gather_rows, sum_across_ranks
from siglip_lightning.eval.loading import embed_owned_images, embed_owned_texts
from siglip_lightning.eval.ranking import recall_counts

BUILTIN = "builtin"


def distributed_recalls(image_features: torch.Tensor, text_features: torch.Tensor, caption_image: torch.Tensor,
                        ks: Sequence[int], **chunks: int) -> Dict[str, float]:
    """Recall@K with the queries dealt round-robin over ranks; hit counts are summed over ranks.

    Every rank holds all embeddings (the keys), ranks only its own queries, so each query is
    counted once and the work is split.
    """
    rank, world = rank_and_world()
    device = image_features.device
    image_queries = torch.arange(rank, image_features.shape[0], world, device=device)
    text_queries = torch.arange(rank, text_features.shape[0], world, device=device)
    counts = recall_counts(image_features, text_features, caption_image, ks, image_queries, text_queries, **chunks)
    keys = list(counts)
    totals = sum_across_ranks(torch.tensor([counts[k] for k in keys], dtype=torch.float64, device=device))
    return {key: float(hits / max(1.0, float(queries))) for key, (hits, queries) in zip(keys, totals)}


def per_language_recalls(image_features: torch.Tensor, text_features: torch.Tensor, caption_set: CaptionSet,
                         ks: Sequence[int], **chunks: int) -> Dict[str, float]:
    """One caption pool: its recalls. Several languages: each language's recalls (over the images
    that have captions in it) as ``<lang>/<metric>``, and their mean as ``<metric>``."""
    device = image_features.device
    caption_image = torch.tensor(caption_set.caption_image, dtype=torch.long, device=device)
    languages = caption_set.languages
    if not languages:
        return distributed_recalls(image_features, text_features, caption_image, ks, **chunks)
    metrics: Dict[str, float] = {}
    tags = [lang if lang is not None else "unknown" for lang in caption_set.caption_language]
    names = sorted(set(tags))
    code = {name: i for i, name in enumerate(names)}
    codes = torch.tensor([code[tag] for tag in tags], device=device)
    for index, language in enumerate(names):
        keep = codes == index
        images = torch.unique(caption_image[keep])  # sorted
        renumber = torch.full((image_features.shape[0],), -1, dtype=torch.long, device=device)
        renumber[images] = torch.arange(images.shape[0], device=device)
        recalls = distributed_recalls(image_features[images], text_features[keep], renumber[caption_image[keep]],
                                      ks, **chunks)
        metrics.update({f"{language}/{key}": value for key, value in recalls.items()})
    for key in recalls:
        metrics[key] = sum(metrics[f"{language}/{key}"] for language in names) / len(names)
    return metrics


class Retrieval(EvalCallback):
    """Recall@K image -> text (right if any of the image's captions is in the top K) and text -> image.

    Logged as ``retrieval/<name>/image_to_text_R@1`` etc.; with several languages also
    ``retrieval/<name>/<lang>/...`` per language, the unprefixed values then being their mean.

    Args:
        name: label used in the logged metric names.
        path: the caption set: a Karpathy split json (``dataset_coco.json``), a COCO captions json,
            a ``[{image, caption}]`` json, any dataset ``datasets`` reads, or ``builtin`` (the
            validation pairs of the built-in shapes data).
        split: for a Karpathy json the split to use (default ``test``); for a dataset, its split
            (default: the only one, else test / validation / val).
        image_root: folder the json's (or a path column's) relative image paths start from
            (default: the json file's folder).
        image_column: column with the images (default: image, img, jpg, ...).
        caption_column: column with the captions: a string, a list, or a dict language -> captions.
        image_id_column: rows with the same value here are one image with several captions
            (default: every row is its own image).
        language_column: column naming each row's caption language (XM3600 style).
        languages: keep only captions in these languages (default: all).
        ks: the K of Recall@K (default 1, 5, 10).
        batch_size: images / captions per forward pass.
        max_images: evaluate only the first this many images (``None``: all).
        num_workers: DataLoader workers decoding images.
        query_chunk: queries scored at once (memory: query_chunk x key_chunk scores).
        key_chunk: keys scored at once.
        every_n_steps: also evaluate every this many training steps (``None``: only at validation).
        at_validation: evaluate at the end of each validation loop (fit and ``validate``).
        patch_budget: NaFlex models only: evaluate at this patch budget (default: ``data.naflex.eval_budget``).
    """

    prefix = "retrieval"

    def __init__(self, name: str = "coco", path: str = BUILTIN, split: Optional[str] = None,
                 image_root: Optional[str] = None, image_column: Optional[str] = None,
                 caption_column: Optional[str] = None, image_id_column: Optional[str] = None,
                 language_column: Optional[str] = None, languages: Optional[List[str]] = None,
                 ks: Optional[List[int]] = None, batch_size: int = 256, max_images: Optional[int] = None,
                 num_workers: int = 0, query_chunk: int = 1024, key_chunk: int = 16384,
                 every_n_steps: Optional[int] = None, at_validation: bool = True,
                 patch_budget: Optional[int] = None) -> None:
        super().__init__(name, every_n_steps, at_validation, patch_budget)
        ks = [1, 5, 10] if ks is None else list(ks)
        if not ks or min(ks) < 1:
            raise UserInputError(f"Retrieval {name!r}: ks must be positive integers, got {ks}")
        self.path, self.split, self.image_root = path, split, image_root
        self.image_column, self.caption_column = image_column, caption_column
        self.image_id_column, self.language_column, self.languages = image_id_column, language_column, languages
        self.ks, self.batch_size, self.max_images, self.num_workers = tuple(ks), batch_size, max_images, num_workers
        self.chunks = {"query_chunk": query_chunk, "key_chunk": key_chunk}

    def _where(self) -> str:
        return f"Retrieval {self.name!r}"

    def caption_set(self, datamodule) -> CaptionSet:
        path, split = self.path, self.split
        if path == BUILTIN:
            if getattr(datamodule, "path", None) != BUILTIN:
                raise UserInputError(f"{self._where()}: path 'builtin' needs the built-in data; set init_args.path")
            path, split = str(datamodule.builtin_root / "pairs"), split or "validation"
        return read_caption_set(path, split, self.image_root, self.image_column, self.caption_column,
                                self.image_id_column, self.language_column, self.max_images, self.languages,
                                self._where())

    def measure(self, module: LightningModule, context: EvalContext) -> Dict[str, float]:
        captions = self.caption_set(context.datamodule)
        rank, world = rank_and_world()
        positions, features, _ = embed_owned_images(module, captions.images, context.transform, rank, world,
                                                    self.batch_size, self.num_workers, self._where(), context.precision)
        image_features = gather_rows(positions, features, captions.num_images)
        positions, features = embed_owned_texts(module, context.tokenizer, captions.captions, rank, world,
                                                self.batch_size)
        text_features = gather_rows(positions, features, len(captions.captions))
        return per_language_recalls(image_features, text_features, captions, self.ks, **self.chunks)

    def summary(self, metrics: Dict[str, float]) -> str:
        shown = [k for k in metrics if "/" not in k]
        return ", ".join(f"{key} {metrics[key]:.3f}" for key in shown)
