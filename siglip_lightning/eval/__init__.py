"""Evaluators run as callbacks during training or by ``siglip-lightning validate``."""
from siglip_lightning.eval.base import EvalCallback
from siglip_lightning.eval.ranking import recall_at_k, retrieval_hits, topk_indices
from siglip_lightning.eval.retrieval import Retrieval
from siglip_lightning.eval.zeroshot import ZeroShotClassification, class_embeddings

__all__ = ["EvalCallback", "Retrieval", "ZeroShotClassification", "class_embeddings", "recall_at_k",
           "retrieval_hits", "topk_indices"]
