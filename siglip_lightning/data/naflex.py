"""The NaFlex data path (SigLIP 2): images at their own aspect ratio, cut into patches within a budget.

Per image: resize, keeping the aspect ratio, to the largest grid of ``patch_size`` patches whose
count fits the patch budget (the rule and the resize of ``transformers``' ``Siglip2ImageProcessor``:
a search over scales, sides rounded up to whole patches, antialiased bilinear on uint8), scale to
``(x / 255 - mean) / std``, cut into patches (``towers/patches.py``). Per batch: pad the sequences to
the batch's longest (or to the budget), with a mask and each image's grid shape.

Several budgets (SigLIP 2 trains NaFlex at several sequence lengths): each batch draws one. Workers
resize every image for the largest budget; the collate, which runs in the same worker, draws the
batch's budget from a generator seeded by (seed, epoch, the batch's number in the pass), so every
rank of a step draws the same budget and a resumed run draws the same budgets, and re-resizes to
smaller grids. The position bookkeeping of the stream is
untouched: exact mid-epoch resume works as for fixed-size images.

Why our own code: the resize rule must be ``transformers``' exactly (exported models are used with
its processor); the pieces that can come from a library do (torchvision's resize).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as tvF

from siglip_lightning.data.stream import batch_number, collate_pairs
from siglip_lightning.data.transforms import ImageTransform, to_rgb
from siglip_lightning.errors import UserInputError
from siglip_lightning.towers.patches import PatchBatch, one_image, patchify


@dataclass
class NaFlexSpec:
    """Settings of the NaFlex data path (``data.naflex``); its presence switches it on.

    Args:
        patch_size: patch side in pixels (must equal the image tower's ``patch_size``).
        budgets: patch budgets (max patches per image); each training batch draws one uniformly.
        eval_budget: budget for validation and the evaluation callbacks (default: the largest).
        pad_to: ``longest`` pads each batch to its longest sequence; ``budget`` pads to the drawn
            budget (fixed shapes per budget, e.g. for ``torch.compile``).
    """

    patch_size: int = 8
    budgets: List[int] = field(default_factory=lambda: [16])
    eval_budget: Optional[int] = None
    pad_to: Literal["longest", "budget"] = "longest"

    def __post_init__(self) -> None:
        self.budgets = [int(b) for b in ([self.budgets] if isinstance(self.budgets, int) else self.budgets)]
        if not self.budgets or min(self.budgets) < 1:
            raise UserInputError(f"data.naflex.budgets must be positive patch counts, got {self.budgets}")
        if self.patch_size < 1:
            raise UserInputError(f"data.naflex.patch_size must be positive, got {self.patch_size}")
        if self.pad_to not in ("longest", "budget"):
            raise UserInputError(f"data.naflex.pad_to must be 'longest' or 'budget', got {self.pad_to!r}")
        if self.eval_budget is None:
            self.eval_budget = max(self.budgets)


def grid_for_budget(height: int, width: int, patch_size: int, budget: int, eps: float = 1e-5) -> Tuple[int, int]:
    """Pixel size ``(H, W)``, multiples of ``patch_size``, of the largest aspect-preserving grid within ``budget``.

    Same search as ``transformers``' ``get_image_size_for_max_num_patches`` (so the same sizes).
    """
    def side(scale: float, size: int) -> int:
        return max(patch_size, int(math.ceil(size * scale / patch_size) * patch_size))

    low, high = eps / 10, 100.0
    while high - low >= eps:
        scale = (low + high) / 2
        if (side(scale, height) / patch_size) * (side(scale, width) / patch_size) <= budget:
            low = scale
        else:
            high = scale
    return side(low, height), side(low, width)


@dataclass
class SizedImage:
    """A uint8 ``[3, H, W]`` image resized for the largest budget, and the size it had before."""

    pixels: torch.Tensor
    original: Tuple[int, int]


class NaFlexTransform:
    """PIL image -> patches of one image (one budget) or a :class:`SizedImage` (several; see the module doc).

    Args:
        patch_size: patch side in pixels.
        budget: one patch budget, or several (the collate draws one per batch).
        mean: per-channel mean after scaling to [0, 1].
        std: per-channel std.
        augment: random crop (same fraction of both sides: the aspect ratio is kept) and flip.
    """

    def __init__(self, patch_size: int = 8, budget: Any = 16, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), augment: bool = False) -> None:
        self.patch_size = patch_size
        self.budgets = sorted({int(b) for b in ([budget] if isinstance(budget, int) else budget)})
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._scale, self._offset = 1.0 / (255.0 * self.std), self.mean / self.std
        self.augment = augment
        # JPEG draft size for the stream: the short side never needs more than the square grid's side
        self.image_size = patch_size * math.ceil(math.sqrt(max(self.budgets)))

    def with_budget(self, budget: int) -> "NaFlexTransform":
        """The same transform (no augmentation) at one budget: what evaluation uses."""
        return NaFlexTransform(self.patch_size, budget, self.mean.flatten().tolist(), self.std.flatten().tolist())

    def resize(self, pixels: torch.Tensor, original: Tuple[int, int], budget: int) -> torch.Tensor:
        height, width = grid_for_budget(*original, self.patch_size, budget)
        if (height, width) == tuple(pixels.shape[-2:]):
            return pixels
        return tvF.resize(pixels, [height, width], interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)

    def finish(self, pixels: torch.Tensor) -> PatchBatch:
        """uint8 ``[3, H, W]`` (whole patches) -> one image's normalised patches."""
        # one float copy, then in place: (x / 255 - mean) / std = x * scale - offset
        values = pixels.float().mul_(self._scale).sub_(self._offset)
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        return one_image(patchify(values, self.patch_size), grid)

    def __call__(self, image: Image.Image, rng: Optional[random.Random] = None) -> Any:
        if image.mode != "RGB":
            image = to_rgb(image)
        if self.augment:
            rng = rng or random
            image = image.crop(ImageTransform.crop_box(image.size, rng))
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        original = (pixels.shape[1], pixels.shape[2])
        pixels = self.resize(pixels, original, self.budgets[-1])
        if len(self.budgets) == 1:
            return self.finish(pixels)
        return SizedImage(pixels, original)

    def draw_budget(self, seed: int, batch: Any) -> int:
        """The budget of the pass's ``batch`` (``(epoch, index)``, :func:`~siglip_lightning.data.stream.batch_number`)."""
        if len(self.budgets) == 1:
            return self.budgets[0]
        # integers only: Python salts str hashes per process, and a resumed run must draw the same
        return random.Random(hash((seed, 0x5EED, *(batch or ())))).choice(self.budgets)

    def batch_images(self, images: List[Any], budget: int, pad_to: str = "longest") -> PatchBatch:
        """Samples' transform outputs -> one padded batch at ``budget``."""
        items = [item if isinstance(item, PatchBatch) else self.finish(self.resize(item.pixels, item.original, budget))
                 for item in images]
        return PatchBatch.stack(items, pad_to=budget if pad_to == "budget" else 0)


class NaFlexCollate:
    """``collate_pairs`` with the images batched as a padded :class:`PatchBatch` (runs in the workers).

    Args:
        transform: the training transform (its budgets).
        seed: seeds the per-batch budget draw (with the batch's stream position).
        pad_to: ``longest`` or ``budget`` (see :class:`NaFlexSpec`).
    """

    def __init__(self, transform: NaFlexTransform, seed: int = 0, pad_to: str = "longest") -> None:
        self.transform, self.seed, self.pad_to = transform, seed, pad_to

    def __call__(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        images = [s["image"] for s in samples]
        # Drawn from the batch's number in the pass, not from where this rank's stream stands: every
        # rank of a step gets the same budget (no rank waits for a longer one), and a resume draws it again.
        budget = self.transform.draw_budget(self.seed, batch_number(samples))
        batch = collate_pairs([{**s, "image": torch.zeros(())} for s in samples])
        batch["image"] = self.transform.batch_images(images, budget, self.pad_to)
        batch["patch_budget"] = budget
        return batch


def naflex_pieces(spec: NaFlexSpec, mean, std, augment: bool, seed: int):
    """(training transform, evaluation transform, training collate, evaluation collate) for ``spec``."""
    train = NaFlexTransform(spec.patch_size, spec.budgets, mean, std, augment=augment)
    evaluation = NaFlexTransform(spec.patch_size, spec.eval_budget, mean, std)
    return train, evaluation, NaFlexCollate(train, seed, spec.pad_to), NaFlexCollate(evaluation, seed, spec.pad_to)


def stack_images(images: Sequence[Any]) -> Any:
    """What an evaluation loader's collate does with a list of transformed images (tensors or patches)."""
    if isinstance(images[0], PatchBatch):
        return PatchBatch.stack(list(images))
    return torch.stack(list(images))
