"""Evaluators run as callbacks during training or by ``siglip-lightning validate``."""
from siglip_lightning.eval.zeroshot import ZeroShotClassification, class_embeddings

__all__ = ["ZeroShotClassification", "class_embeddings"]
