"""What a NaFlex image tower takes: a batch of patch sequences of different lengths, padded.

SigLIP 2's NaFlex variant (Tschannen et al. 2025, arXiv 2502.14786) cuts each image, at its own
aspect ratio, into a grid of ``h x w`` patches and flattens them. Images of one batch have
different ``h * w``, so the sequences are padded to one length and a mask marks the real patches.
The layout of one patch vector is ``(row in patch, column in patch, channel)``, as Hugging Face's
``Siglip2ImageProcessor`` writes it, so exported weights take that processor's output unchanged.

:class:`PatchBatch` behaves enough like a tensor of images for the code that only counts, moves,
slices or splits a batch (``.shape[0]``, ``.to``, ``[a:b]``, ``torch.tensor_split`` in gradient
caching), so the model and the loaders pass it through where they pass ``batch["image"]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Sequence, Tuple

import torch

from siglip_lightning import _compat


@dataclass
class PatchBatch:
    """A padded batch of patch sequences.

    Args:
        patches: ``[b, L, patch_size**2 * 3]`` float pixel values, padding rows zero.
        mask: ``[b, L]`` bool, True for a real patch.
        spatial_shapes: ``[b, 2]`` long, the patch grid ``(h, w)`` of each image; ``h * w`` real patches,
            row-major, first in the sequence.
    """

    patches: torch.Tensor
    mask: torch.Tensor
    spatial_shapes: torch.Tensor

    # --- enough of the tensor interface for the code that handles batches -------------------------
    @property
    def shape(self) -> torch.Size:
        return self.patches.shape

    @property
    def device(self) -> torch.device:
        return self.patches.device

    @property
    def dtype(self) -> torch.dtype:
        return self.patches.dtype

    def __len__(self) -> int:
        return self.patches.shape[0]

    def __getitem__(self, index) -> "PatchBatch":
        if not isinstance(index, slice):
            index = slice(index, index + 1) if isinstance(index, int) else index
        return PatchBatch(self.patches[index], self.mask[index], self.spatial_shapes[index])

    def to(self, *args, **kwargs) -> "PatchBatch":
        """Moves all three; a dtype given applies to the pixel values only."""
        device = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get("device"))
        return PatchBatch(self.patches.to(*args, **kwargs), self.mask.to(device), self.spatial_shapes.to(device))

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.tensor_split:  # gradient caching splits a batch into micro-batches
            batch, sections = args[0], args[1]
            rows = torch.tensor_split(torch.arange(len(batch)), sections, **kwargs)
            return tuple(batch[int(r[0]):int(r[-1]) + 1].trimmed() if len(r) else batch[0:0] for r in rows)
        raise TypeError(f"{func.__name__} is not defined on a PatchBatch (NaFlex images); only tensor_split is")

    def trimmed(self) -> "PatchBatch":
        """Drop padding columns no image of this batch uses (after slicing a micro-batch)."""
        longest = int(self.mask.sum(1).max()) if len(self) else 0
        return PatchBatch(self.patches[:, :longest], self.mask[:, :longest], self.spatial_shapes)

    @staticmethod
    def stack(items: Sequence["PatchBatch"], pad_to: int = 0) -> "PatchBatch":
        """One batch from several, padded to the longest sequence (or ``pad_to`` if longer)."""
        length = max([pad_to] + [item.patches.shape[1] for item in items])
        rows = sum(len(item) for item in items)
        first = items[0]
        patches = _empty_for_transfer(first.patches, (rows, length, first.patches.shape[-1]))
        mask = torch.zeros(rows, length, dtype=torch.bool)
        row = 0
        for item in items:
            n, width = len(item), item.patches.shape[1]
            patches[row:row + n, :width] = item.patches
            patches[row:row + n, width:] = 0
            mask[row:row + n, :width] = item.mask
            row += n
        return PatchBatch(patches, mask, torch.cat([item.spatial_shapes for item in items]))


def _empty_for_transfer(like: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker, in shared memory, so sending the batch to the
    main process does not copy it again (what ``default_collate`` does for stacked tensors)."""
    if torch.utils.data.get_worker_info() is None or like.device.type != "cpu":
        return like.new_empty(shape)
    numel = 1
    for size in shape:
        numel *= size
    return _compat.shared_memory_empty(like, numel).resize_(*shape)


def as_patch_batch(inputs: Any) -> PatchBatch:
    """A :class:`PatchBatch` from itself, a mapping (ours or Hugging Face's names) or a 3-tuple."""
    if isinstance(inputs, PatchBatch):
        return inputs
    if isinstance(inputs, Mapping):
        if "pixel_values" in inputs:  # what Siglip2ImageProcessor returns
            return PatchBatch(inputs["pixel_values"], inputs["pixel_attention_mask"].bool(),
                              torch.as_tensor(inputs["spatial_shapes"]).long())
        return PatchBatch(inputs["patches"], inputs["mask"].bool(), torch.as_tensor(inputs["spatial_shapes"]).long())
    if isinstance(inputs, (tuple, list)) and len(inputs) == 3:
        patches, mask, shapes = inputs
        return PatchBatch(patches, mask.bool(), torch.as_tensor(shapes).long())
    kind = f"a tensor of shape {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor) else type(inputs).__name__
    raise TypeError(
        f"a NaFlex image tower takes patch sequences (a PatchBatch, or (patches, mask, spatial_shapes)), got {kind}: "
        "set data.naflex so the data pipeline cuts images into patches")


def patchify(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[3, H, W]`` (H, W multiples of ``patch_size``) -> ``[H/p * W/p, p * p * 3]``, rows row-major."""
    channels, height, width = image.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image {height}x{width} is not a whole number of {patch_size}-pixel patches")
    grid = image.reshape(channels, height // patch_size, patch_size, width // patch_size, patch_size)
    return grid.permute(1, 3, 2, 4, 0).reshape((height // patch_size) * (width // patch_size), -1)


def one_image(patches: torch.Tensor, grid: Tuple[int, int]) -> PatchBatch:
    """A batch of one unpadded image."""
    mask = torch.ones(1, patches.shape[0], dtype=torch.bool)
    return PatchBatch(patches[None], mask, torch.tensor([list(grid)], dtype=torch.long))


def split_rows(batch: PatchBatch) -> List[PatchBatch]:
    """Each image of ``batch`` alone, without its padding."""
    out = []
    for i in range(len(batch)):
        n = int(batch.mask[i].sum())
        out.append(PatchBatch(batch.patches[i:i + 1, :n], batch.mask[i:i + 1, :n], batch.spatial_shapes[i:i + 1]))
    return out
