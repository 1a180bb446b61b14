"""The spatial test: does the image embedding prefer its true caption over the same words in a wrong
relation or with the two colours swapped? (SigLIP 2 claims better localisation; bag-of-words matching
of plain contrastive models scores these negatives as high as the truth.)

Scored on held-out built-in two-shape scenes (``data/probe_scenes.py``); logged as
``spatial/<name>/all`` (true caption above both negatives, chance 1/3), ``.../relation`` and
``.../colour`` (above that one negative, chance 1/2).
"""
from __future__ import annotations

from typing import Dict, List

import torch
from lightning.pytorch import LightningModule

from siglip_lightning.data.decode import decode_image
from siglip_lightning.data.probe_scenes import relation_scene
from siglip_lightning.errors import UserInputError
from siglip_lightning.eval.base import EvalCallback, EvalContext
from siglip_lightning.eval.loading import embed_owned_texts

NEGATIVE_KINDS = ("relation", "colour")


def hard_negative_accuracy(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """Share of images whose true caption (``text_features[:, 0]``) scores strictly above every hard
    negative (``text_features[:, 1:]``). ``image_features`` ``[n, d]``, ``text_features`` ``[n, 1 + k, d]``."""
    scores = torch.einsum("nd,nkd->nk", image_features.float(), text_features.float())
    return float((scores[:, 0] > scores[:, 1:].max(dim=1).values).float().mean())


def builtin_spec(context: EvalContext, where: str):
    spec = getattr(context.datamodule, "builtin_spec", None)
    specs = getattr(context.datamodule, "specs", [])
    if spec is None or not specs or specs[0].path != "builtin":
        raise UserInputError(f"{where} draws its images with the built-in generator: it needs data.path: builtin")
    return spec


def image_batches(module: LightningModule, context: EvalContext, pngs: List[bytes], batch_size: int):
    """The evaluation transform's tensors of ``pngs``, ``batch_size`` at a time, on the module's device and
    in its precision (what the spatial test and the dense probe feed the image tower)."""
    for start in range(0, len(pngs), batch_size):
        images = torch.stack([context.transform(decode_image(p)) for p in pngs[start:start + batch_size]])
        images = images.to(module.device)
        yield context.precision.convert_input(images) if context.precision is not None else images


@torch.no_grad()
def embed_images(module: LightningModule, context: EvalContext, pngs: List[bytes], batch_size: int) -> torch.Tensor:
    return torch.cat([module.encode_image(images).float() for images in image_batches(module, context, pngs, batch_size)])


class SpatialHardNegatives(EvalCallback):
    """Hard-negative caption ranking on ``num_images`` held-out two-shape scenes (every rank scores all
    of them: a few hundred images, the same global value everywhere).

    Args:
        name: label in the logged metric names.
        num_images: scenes scored.
        batch_size: images / captions per forward pass.
        every_n_steps, at_validation: when to run (see :class:`EvalCallback`).
    """

    prefix = "spatial"

    def __init__(self, name: str = "builtin", num_images: int = 512, batch_size: int = 256,
                 every_n_steps=None, at_validation: bool = True) -> None:
        super().__init__(name, every_n_steps, at_validation)
        self.num_images, self.batch_size = num_images, batch_size

    def measure(self, module: LightningModule, context: EvalContext) -> Dict[str, float]:
        spec = builtin_spec(context, f"SpatialHardNegatives {self.name!r}")
        scenes = [relation_scene(spec, i) for i in range(self.num_images)]
        images = embed_images(module, context, [s.image for s in scenes], self.batch_size)
        texts = [text for s in scenes for text in (s.caption, *(s.negatives[k] for k in NEGATIVE_KINDS))]
        captions = embed_owned_texts(module, context.tokenizer, texts, 0, 1, self.batch_size)[1].view(len(scenes), 1 + len(NEGATIVE_KINDS), -1)
        metrics = {"all": hard_negative_accuracy(images, captions)}
        for number, kind in enumerate(NEGATIVE_KINDS, start=1):
            metrics[kind] = hard_negative_accuracy(images, captions[:, [0, number]])
        metrics["chance"] = 1.0 / (1 + len(NEGATIVE_KINDS))
        return metrics

    def summary(self, metrics: Dict[str, float]) -> str:
        return (f"true caption first {metrics['all']:.3f} (chance {metrics['chance']:.3f}); vs relation swap "
                f"{metrics['relation']:.3f}, vs colour swap {metrics['colour']:.3f} (chance 0.5)")
