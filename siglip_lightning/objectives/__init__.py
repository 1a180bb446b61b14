"""Training objectives beside the contrastive loss: SigLIP 2's recipe (``model.objectives`` in YAML).

- ``base.py``: the ``Objective`` interface (weight, start / stop as fractions of training) and the
  global-batch mean of per-example losses;
- ``locca.py`` / ``decoder.py``: LocCa captioning (autoregressive and parallel prediction);
- ``silc.py``: SILC self-distillation (local crops vs the teacher's global view);
- ``tips.py``: TIPS masked prediction (masked patches vs the teacher's patches);
- ``teacher.py``: the EMA teacher; ``heads.py``: their head and cross-entropy; ``views.py``: the
  crops and masks, made from the batch image; ``context.py``: what one step's objectives share.
"""
from siglip_lightning.objectives.base import Objective, global_mean_share
from siglip_lightning.objectives.locca import LocCaCaptioning
from siglip_lightning.objectives.silc import SelfDistillation
from siglip_lightning.objectives.teacher import EMATeacher
from siglip_lightning.objectives.tips import MaskedPrediction

__all__ = ["EMATeacher", "LocCaCaptioning", "MaskedPrediction", "Objective", "SelfDistillation", "global_mean_share"]
