"""Image preprocessing as in the paper: RGB, resize to the model's resolution, values in [-1, 1]."""
from __future__ import annotations

import random
from typing import Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image


RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class ImageTransform:
    """PIL image (any mode) -> float tensor ``[3, size, size]``.

    Args:
        image_size: output side in pixels (square resize, no crop, as in SigLIP).
        mean: per-channel mean subtracted after scaling to [0, 1]; 0.5 gives SigLIP's [-1, 1].
        std: per-channel std divided by.
        augment: random horizontal flip and a mild random resized crop (training only).
        resample: ``bilinear`` (SigLIP's) or ``bicubic`` (open_clip's SigLIP configs).
        resize_backend: ``pil`` (PIL with a fast box pre-shrink of large images: quick, not bit-exact
            with any library), ``pil_exact`` (plain PIL resize: transformers 4 image processors),
            ``open_clip`` (open_clip's transforms: plain PIL resize in the image's own mode, then RGB,
            alpha dropped) or ``torchvision`` (antialiased resize of the uint8 tensor: transformers 5
            image processors). Pick the one of the checkpoint being fine-tuned.
    """

    def __init__(
        self,
        image_size: int = 224,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        augment: bool = False,
        resample: Literal["bilinear", "bicubic"] = "bilinear",
        resize_backend: Literal["pil", "pil_exact", "open_clip", "torchvision"] = "pil",
    ) -> None:
        if resample not in RESAMPLE or resize_backend not in ("pil", "pil_exact", "open_clip", "torchvision"):
            raise ValueError(f"unknown resample {resample!r} or resize_backend {resize_backend!r}")
        self.resample, self.resize_backend = resample, resize_backend
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._scale = 1.0 / (255.0 * self.std)
        self._offset = self.mean / self.std
        self.augment = augment

    @staticmethod
    def crop_box(size: Tuple[int, int], rng: random.Random) -> Tuple[int, int, int, int]:
        w, h = size
        scale = rng.uniform(0.8, 1.0)
        cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return x0, y0, x0 + cw, y0 + ch

    def __call__(self, image: Image.Image, rng: Optional[random.Random] = None) -> torch.Tensor:
        """``rng`` drives augmentation (the data stream seeds it per sample, for exact resume)."""
        if image.mode != "RGB" and self.resize_backend != "open_clip":
            image = to_rgb(image)
        rng = rng or random
        box = self.crop_box(image.size, rng) if self.augment else None
        if self.resize_backend == "torchvision":
            tensor = self._torchvision_resize(image.crop(box) if box is not None else image)
        else:
            # reducing_gap (pil): a fast box pre-shrink for images much larger than the target
            gap = 3.0 if self.resize_backend == "pil" else None
            image = image.resize((self.image_size, self.image_size), RESAMPLE[self.resample], box=box,
                                 reducing_gap=gap)
            if image.mode != "RGB":  # open_clip: converted after the resize
                image = image.convert("RGB")
            # copy: np.asarray of PIL is read-only
            tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        if self.augment and rng.random() < 0.5:
            tensor = tensor.flip(-1)
        # one float copy, then in place: (x / 255 - mean) / std = x * scale - offset
        return tensor.float().mul_(self._scale).sub_(self._offset)

    def _torchvision_resize(self, image: Image.Image) -> torch.Tensor:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as tvF

        mode = InterpolationMode.BICUBIC if self.resample == "bicubic" else InterpolationMode.BILINEAR
        tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return tvF.resize(tensor, [self.image_size, self.image_size], interpolation=mode, antialias=True)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: alpha composited on white, palette/CMYK/16-bit converted."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        return Image.fromarray((array / top * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")
