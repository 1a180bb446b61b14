"""The interface of a training objective beside the contrastive loss, and its global-batch mean.

An objective returns one loss per example of this rank's batch (``[b]``). The module turns that into
the mean over the GLOBAL batch with :func:`global_mean_share`: each rank returns the share

    S_r = W * sum_i l_ri / N,    N = sum_r b_r (all ranks' examples),

so that the mean of the shares over ranks is the global mean sum_ri l_ri / N (what ``self.log`` with
``sync_dist`` reports), and DDP's gradient average (1/W) sum_r dS_r = sum_r d(sum_i l_ri) / N is the
gradient of the global mean. The same convention as the contrastive losses' shares
(``losses/base.py``), so the two add up in one scalar per rank.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from siglip_lightning.errors import UserInputError
from siglip_lightning.ranks import is_distributed, world_size

if TYPE_CHECKING:  # pragma: no cover
    from siglip_lightning.objectives.context import StepContext


def global_mean_share(per_example: torch.Tensor) -> torch.Tensor:
    """This rank's share S_r of the global mean of ``per_example`` (see the module docstring)."""
    total = per_example.sum()
    world = world_size()
    if world == 1:
        return total / max(per_example.shape[0], 1)
    count = torch.tensor(float(per_example.shape[0]), device=total.device, dtype=torch.float64)
    if is_distributed():
        dist.all_reduce(count)
    return total * world / count.clamp(min=1).to(total.dtype)


class Objective(nn.Module):
    """One loss beside the contrastive one, weighted and switched on for a span of training.

    Args:
        weight: multiplier of this objective's global-mean loss in the total.
        start: first fraction of training steps (``global_step / total_steps``) at which it is on.
        stop: fraction at which it goes off again (1.0: until the end).
    """

    #: name used in logs (``train/<name>``)
    name = "objective"
    #: uses the EMA teacher (``objectives/teacher.py``), which the module then holds
    uses_teacher = False

    def __init__(self, weight: float = 1.0, start: float = 0.0, stop: float = 1.0) -> None:
        super().__init__()
        if weight < 0:
            raise UserInputError(f"{type(self).__name__}: weight must be >= 0, got {weight}")
        if not 0.0 <= start < stop <= 1.0:
            raise UserInputError(f"{type(self).__name__}: need 0 <= start < stop <= 1 (fractions of training "
                                 f"steps), got start={start}, stop={stop}")
        self.weight, self.start, self.stop = float(weight), float(start), float(stop)

    def active(self, progress: float) -> bool:
        return self.weight > 0 and self.start <= progress < self.stop

    def build(self, image_tower: nn.Module, text_tower: nn.Module) -> None:
        """Create the submodules that depend on the towers' sizes (called once by the module)."""

    def configure(self, datamodule: Any) -> None:
        """Read what the data says (the tokenizer's pad id, ...) at ``setup``."""

    def per_example(self, context: "StepContext") -> torch.Tensor:
        """Loss of each example of this rank's batch, ``[b]``."""
        raise NotImplementedError
