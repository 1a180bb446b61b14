"""Text: every tokenizer a run can use, in one home that training (the datamodule), export and import share.

``sentencepiece`` (SigLIP's conventions and CLIP's BPE), ``gemma`` (SigLIP 2's conventions over a
local SentencePiece model), ``hf_gemma`` (the same model as a ``transformers`` tokenizer, for export),
``pretrained`` (a released folder's tokenizer through its own library), ``choice`` (``data.tokenizer_type``).
"""
from siglip_lightning.text.interface import Tokenizer

__all__ = ["Tokenizer"]
