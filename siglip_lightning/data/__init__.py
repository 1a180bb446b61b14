"""Data: the built-in shapes set, streaming datamodule, tokenizer and image transforms."""
from siglip_lightning.data.datamodule import ImageTextDataModule
from siglip_lightning.data.synthetic import ShapesSpec
from siglip_lightning.text.sentencepiece import SentencePieceTokenizer, train_sentencepiece
from siglip_lightning.data.transforms import ImageTransform

__all__ = ["ImageTextDataModule", "ShapesSpec", "SentencePieceTokenizer", "train_sentencepiece", "ImageTransform"]
