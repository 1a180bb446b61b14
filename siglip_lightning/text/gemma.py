"""SigLIP 2's text conventions over a SentencePiece model trained here (Gemma's layout).

SigLIP 2 uses Gemma's 256k vocabulary: ids ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3,
``<mask>`` 4, BPE with byte fallback, no dummy prefix (``"a cat"`` is ``a ▁cat``), digits split;
captions are lower-cased, closed with EOS (no BOS), cut / padded with ``<pad>`` to 64 tokens. Gemma's
own vocabulary cannot be downloaded here, so :func:`train_gemma_sentencepiece` trains a model with the
same layout on local captions, and :class:`GemmaStyleTokenizer` applies the conventions; the
``transformers`` tokenizer built over the same model (``text/hf_gemma.py``) gives the same ids.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Union

from siglip_lightning.text.sentencepiece import SentencePieceTokenizer, train_sentencepiece_file
from siglip_lightning.errors import UserInputError

PAD_ID, EOS_ID, BOS_ID, UNK_ID, MASK = 0, 1, 2, 3, "<mask>"


def lower_each_character(text: str) -> str:
    """Lower-case as transformers' ``Siglip2Tokenizer`` (the tokenizers ``Lowercase`` normaliser) does:
    character by character. Python's ``str.lower`` differs only by its final-sigma rule (ΟΔΟΣ → οδος,
    not οδοσ), so the slow path runs only when a capital sigma is present."""
    return "".join(c.lower() for c in text) if "\u03a3" in text else text.lower()


class GemmaStyleTokenizer(SentencePieceTokenizer):
    """Captions -> ``[n, context_length]`` ids: lower-cased, EOS appended, no BOS, padded with id 0.

    The encoding is ``SentencePieceTokenizer``'s but for the text rule (lower-casing only, punctuation
    kept) and the pad id (0, where SigLIP pads with EOS).

    Args:
        model_path: a SentencePiece ``.model`` with Gemma's special ids (see :func:`train_gemma_sentencepiece`).
        context_length: tokens per caption (64 in SigLIP 2).
    """

    def __init__(self, model_path: Union[str, os.PathLike], context_length: int = 64) -> None:
        super().__init__(model_path, context_length)
        if (self.processor.pad_id(), self.processor.eos_id()) != (PAD_ID, EOS_ID):
            raise UserInputError(
                f"{model_path} has pad id {self.processor.pad_id()} and eos id {self.processor.eos_id()}; SigLIP 2 "
                "(Gemma) conventions need 0 and 1: train it with data.tokenizer_type=gemma")
        self.pad_id, self.eos_id = PAD_ID, EOS_ID

    # SigLIP 2 only lower-cases (transformers' Siglip2Tokenizer keeps punctuation)
    normalize = staticmethod(lower_each_character)


def train_gemma_sentencepiece(captions: Iterable[str], model_path: Union[str, os.PathLike],
                              vocab_size: int = 1024) -> Path:
    """Train a BPE SentencePiece model with Gemma's special ids and options on lower-cased captions.

    Byte fallback adds 256 byte pieces, so ``vocab_size`` must leave room for them plus the characters.
    """
    return train_sentencepiece_file(
        captions, model_path, "a Gemma-style SentencePiece tokenizer", lower_each_character, vocab_size=vocab_size,
        model_type="bpe",
        hard_vocab_limit=False, character_coverage=1.0, byte_fallback=True, split_digits=True,
        add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity",
        pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID, pad_piece="<pad>", eos_piece="<eos>",
        bos_piece="<bos>", unk_piece="<unk>", control_symbols=[MASK])
