"""SigLIP 2's text conventions over a SentencePiece model trained here (Gemma's layout).

SigLIP 2 uses Gemma's 256k vocabulary: ids ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3,
``<mask>`` 4, BPE with byte fallback, no dummy prefix (``"a cat"`` is ``a ▁cat``), digits split;
captions are lower-cased, closed with EOS (no BOS), cut / padded with ``<pad>`` to 64 tokens. Gemma's
own vocabulary cannot be downloaded here, so :func:`train_gemma_sentencepiece` trains a model with the
same layout on local captions, and :class:`GemmaStyleTokenizer` applies the conventions; the
``transformers`` tokenizer built over the same model (``interop/gemma_tokenizer.py``) gives the same ids.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, List, Sequence, Union

import sentencepiece as spm
import torch

from siglip_lightning.atomic_files import atomic_path
from siglip_lightning.errors import UserInputError

PAD_ID, EOS_ID, BOS_ID, UNK_ID, MASK = 0, 1, 2, 3, "<mask>"


class GemmaStyleTokenizer:
    """Captions -> ``[n, context_length]`` ids: lower-cased, EOS appended, no BOS, padded with id 0.

    Args:
        model_path: a SentencePiece ``.model`` with Gemma's special ids (see :func:`train_gemma_sentencepiece`).
        context_length: tokens per caption (64 in SigLIP 2).
    """

    def __init__(self, model_path: Union[str, os.PathLike], context_length: int = 64) -> None:
        if not Path(model_path).is_file():
            raise UserInputError(f"tokenizer model file not found: {model_path}")
        if context_length < 2:
            raise UserInputError(f"context_length must be at least 2, got {context_length}")
        self.model_path, self.context_length = str(model_path), context_length
        self.processor = spm.SentencePieceProcessor(model_file=self.model_path)
        if (self.processor.pad_id(), self.processor.eos_id()) != (PAD_ID, EOS_ID):
            raise UserInputError(
                f"{model_path} has pad id {self.processor.pad_id()} and eos id {self.processor.eos_id()}; SigLIP 2 "
                "(Gemma) conventions need 0 and 1: train it with data.tokenizer_type=gemma")
        self.pad_id, self.eos_id = PAD_ID, EOS_ID

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, texts: Sequence[str]) -> List[List[int]]:
        pieces = self.processor.encode([t.lower() for t in texts])
        return [ids[: self.context_length - 1] + [self.eos_id] for ids in pieces]

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for row, ids in enumerate(self.encode(texts)):
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def __getstate__(self) -> dict:  # the processor is a C++ object: workers reload it from the path
        return {"model_path": self.model_path, "context_length": self.context_length}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def train_gemma_sentencepiece(captions: Iterable[str], model_path: Union[str, os.PathLike],
                              vocab_size: int = 1024) -> Path:
    """Train a BPE SentencePiece model with Gemma's special ids and options on lower-cased captions.

    Byte fallback adds 256 byte pieces, so ``vocab_size`` must leave room for them plus the characters.
    """
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    lowered = (c.lower() for c in captions if isinstance(c, str) and c.strip())
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lowered, model_writer=buffer, vocab_size=vocab_size, model_type="bpe",
            hard_vocab_limit=False, character_coverage=1.0, byte_fallback=True, split_digits=True,
            add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity",
            pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID, pad_piece="<pad>", eos_piece="<eos>",
            bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=[MASK], minloglevel=2,
        )
    except RuntimeError as err:
        raise UserInputError(f"could not train a Gemma-style SentencePiece tokenizer on the captions: {err}") from err
    with atomic_path(model_path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return model_path
