"""The dense probe: how much of each patch's content do the frozen image tower's un-pooled patch tokens
carry linearly? (SigLIP 2 adds LocCa / SILC / TIPS for dense features; the pooled embedding alone
does not show them.)

Held-out built-in scenes (``data/probe_scenes.py``) give every patch the colour and the shape under its
centre (background a class of its own). A linear classifier per target is fitted on the patch tokens of
``train_images`` scenes and scored on those of ``test_images`` others. Logged as
``dense/<name>/colour``, ``.../shape`` (held-out per-patch accuracy) and ``.../colour_majority``,
``.../shape_majority`` (always the most frequent training class, mostly background).
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from lightning.pytorch import LightningModule

from siglip_lightning.data.probe_scenes import dense_scene, patch_labels
from siglip_lightning.errors import UserInputError
from siglip_lightning.eval.base import EvalCallback, EvalContext
from siglip_lightning.eval.linear_probe import probe_accuracy
from siglip_lightning.eval.spatial import builtin_spec, image_batches


@torch.no_grad()
def patch_tokens(module: LightningModule, context: EvalContext, pngs, batch_size: int) -> torch.Tensor:
    """``[n, grid^2, width]``: the image tower's final tokens without its prefix (class) token, un-pooled."""
    tower = module.image_tower
    return torch.cat([tower.forward_tokens(images)[0][:, tower.num_prefix_tokens:].float().cpu()
                      for images in image_batches(module, context, pngs, batch_size)])


class DenseProbe(EvalCallback):
    """Linear probes of patch colour and shape on the frozen image tower (fixed-size ``VisionTower``s).

    Args:
        name: label in the logged metric names.
        train_images: scenes whose patches fit the classifiers.
        test_images: other scenes whose patches score them.
        steps: L-BFGS iterations of each fit.
        batch_size: images per forward pass.
        every_n_steps, at_validation: when to run (see :class:`EvalCallback`).
    """

    prefix = "dense"

    def __init__(self, name: str = "builtin", train_images: int = 512, test_images: int = 256, steps: int = 100,
                 batch_size: int = 256, every_n_steps=None, at_validation: bool = True) -> None:
        super().__init__(name, every_n_steps, at_validation)
        self.train_images, self.test_images, self.steps, self.batch_size = train_images, test_images, steps, batch_size

    def measure(self, module: LightningModule, context: EvalContext) -> Dict[str, float]:
        where = f"DenseProbe {self.name!r}"
        spec = builtin_spec(context, where)
        grid = getattr(module.image_tower, "grid_size", None)
        if grid is None:
            raise UserInputError(f"{where} reads a square patch grid: it needs a fixed-size VisionTower (not NaFlex)")
        scenes = [dense_scene(spec, i) for i in range(self.train_images + self.test_images)]
        tokens = patch_tokens(module, context, [s.image for s in scenes], self.batch_size)
        labels = [patch_labels(s.objects, spec, grid) for s in scenes]
        split = self.train_images * grid * grid  # whole images on each side: no patch of a test image is seen
        x = tokens.reshape(-1, tokens.shape[-1])
        metrics = {}
        for target, column, classes in (("colour", 0, 1 + spec.num_colors), ("shape", 1, 1 + spec.num_shapes)):
            y = torch.from_numpy(np.concatenate([pair[column] for pair in labels]))
            result = probe_accuracy(x[:split], y[:split], x[split:], y[split:], classes, self.steps)
            metrics[target], metrics[f"{target}_majority"] = result["acc"], result["majority"]
        return metrics

    def summary(self, metrics: Dict[str, float]) -> str:
        return (f"patch colour {metrics['colour']:.3f} (majority {metrics['colour_majority']:.3f}), "
                f"shape {metrics['shape']:.3f} (majority {metrics['shape_majority']:.3f})")
