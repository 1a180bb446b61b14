"""LocCa's referring-expression accuracy at validation: the decoder's box for a region's caption counts
as right when its IoU with the true box exceeds 0.5 (RefCOCO's rule). Needs ``data.regions_column``."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torchvision.ops import box_iou

from siglip_lightning.objectives.locca import LocCaCaptioning
from siglip_lightning.ranks import is_distributed


def referring_hits(locca: LocCaCaptioning, image_tower: torch.nn.Module, batch: dict) -> torch.Tensor:
    """``[2]``: (boxes with IoU > 0.5, regions scored) of ``batch``'s examples that have a region."""
    has = batch.get("has_region")
    if has is None or not bool(has.any()):
        return torch.zeros(2)
    rows = has.nonzero()[:, 0]
    tokens, padding = image_tower.forward_tokens(batch["image"][rows])
    boxes = locca.predict_boxes(tokens, padding, batch["region_text"][rows])
    iou = box_iou(boxes.float(), batch["region_box"][rows].float()).diagonal()
    return torch.tensor([float((iou > 0.5).sum()), float(rows.numel())])


class ReferringAccuracy(Callback):
    """Log ``val/referring_acc``: the share of validation regions whose predicted box has IoU > 0.5."""

    def __init__(self) -> None:
        self.counts = torch.zeros(2)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.counts = torch.zeros(2)

    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        locca = next((o for o in getattr(pl_module, "objectives", []) if isinstance(o, LocCaCaptioning)), None)
        if locca is not None:
            with torch.no_grad():
                self.counts += referring_hits(locca, pl_module.image_tower, batch).cpu()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        counts = self.counts.to(pl_module.device)
        if is_distributed():
            dist.all_reduce(counts)
        if counts[1] > 0:
            pl_module.log("val/referring_acc", float(counts[0] / counts[1]), rank_zero_only=True)
