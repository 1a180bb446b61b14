"""Multi-crop views made inside the module from the batch's (un-augmented) images, for SILC / TIPS.

The data path carries one image per example; the self-distillation objectives make their views from
it on the device: random resized crops (area fraction ``scale``, aspect ratio ``ratio``, a coin flip
for horizontal mirroring), resampled bilinearly back to the tower's input size with
``F.affine_grid`` / ``F.grid_sample``. The draws come from a generator seeded by (run seed, global
step, rank, stream), so a run (and a resumed run) makes the same views at the same step.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

#: DINO / SILC's global crop: 40-100 % of the image, for the teacher (and TIPS' masked student).
GLOBAL_SCALE = (0.4, 1.0)
#: DINO / SILC's local crops: 5-40 % of the image.
LOCAL_SCALE = (0.05, 0.4)
RATIO = (3 / 4, 4 / 3)


def view_generator(step: int, rank: int, stream: int) -> torch.Generator:
    """A CPU generator that depends only on the run seed (``seed_everything``), the step, the rank and ``stream``."""
    seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    return torch.Generator().manual_seed(hash((seed, step, rank, stream)) & 0x7FFF_FFFF_FFFF)


def crop_thetas(count: int, generator: torch.Generator, scale: Tuple[float, float],
                ratio: Tuple[float, float] = RATIO) -> torch.Tensor:
    """``[count, 2, 3]`` affine maps from output to input coordinates ([-1, 1]) of random resized crops."""
    u = torch.rand(count, 5, generator=generator, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1])
    width, height = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
    cx, cy = (1 - width) * (2 * u[:, 2] - 1), (1 - height) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0).to(torch.float64)
    theta = torch.zeros(count, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = height, cy
    return theta


def crop_views(images: torch.Tensor, views: int, generator: torch.Generator, scale: Tuple[float, float],
               size: Optional[int] = None) -> torch.Tensor:
    """``views`` random resized crops of every image, ``[views * b, 3, size, size]`` (view-major; default size:
    the input's)."""
    b = images.shape[0]
    out_shape = [views * b, images.shape[1], *((size, size) if size else images.shape[2:])]
    work = torch.promote_types(images.dtype, torch.float32)  # sample in float32 at least
    theta = crop_thetas(views * b, generator, scale).to(device=images.device, dtype=work)
    grid = F.affine_grid(theta, out_shape, align_corners=False)
    source = images.to(work).repeat(views, 1, 1, 1)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False).to(images.dtype)


def random_patch_mask(batch: int, patches: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Bool ``[batch, patches]``: exactly ``round(fraction * patches)`` True per row, at random places."""
    count = round(fraction * patches)
    order = torch.rand(batch, patches, generator=generator).argsort(dim=1)
    return order < count
