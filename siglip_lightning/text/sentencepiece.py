"""SentencePiece tokenizer as in SigLIP: canonical text (big_vision's), EOS appended, padded with EOS."""
from __future__ import annotations

import io
import os
import re
import string
from pathlib import Path
from typing import Callable, Iterable, List, Sequence, Union

import sentencepiece as spm
import torch

from siglip_lightning.atomic_files import atomic_path
from siglip_lightning.errors import UserInputError

EOS_ID = 1  # pad = EOS, as in big_vision's SigLIP tokenizers
UNK_ID = 0
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]+")


def canonicalize(text: str) -> str:
    """SigLIP's text canonicalisation (big_vision trains and evaluates this way; transformers'
    ``SiglipTokenizer`` applies it): lower-case, ASCII punctuation removed, whitespace runs collapsed
    to one space, ends stripped. ``"▁"`` (SentencePiece's word mark) counts as a space, as there."""
    # str.split() splits on exactly the characters re's \s matches; twice as fast as translate + sub
    return " ".join(_PUNCTUATION.sub("", text.replace("\u2581", " ").lower()).split())


class SentencePieceTokenizer:
    """Turns captions into fixed-length id tensors ``[n, context_length]``.

    Captions are canonicalised (:func:`canonicalize`), encoded, cut to ``context_length - 1`` tokens
    and closed with EOS, then padded with EOS (so the last position, which the text tower pools, is
    always EOS). These are exactly the ids of the ``SiglipTokenizer`` that ``export --format hf``
    writes over the same model file (tested on punctuation, digits, unicode, truncation).

    Args:
        model_path: a SentencePiece ``.model`` file.
        context_length: tokens per caption.
    """

    def __init__(self, model_path: Union[str, os.PathLike], context_length: int = 16) -> None:
        if not Path(model_path).is_file():
            raise UserInputError(f"tokenizer model file not found: {model_path}")
        if context_length < 2:
            raise UserInputError(f"context_length must be at least 2, got {context_length}")
        self.model_path = str(model_path)
        self.context_length = context_length
        self.processor = spm.SentencePieceProcessor(model_file=self.model_path)
        self.eos_id = self.processor.eos_id() if self.processor.eos_id() >= 0 else EOS_ID
        self.pad_id = self.eos_id

    # the text rule of this tokenizer's convention; SigLIP 2's (gemma) only lower-cases
    normalize = staticmethod(canonicalize)

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, texts: Sequence[str]) -> List[List[int]]:
        """Variable-length ids (EOS included) before padding."""
        # One call per text: SentencePiece's list form runs a thread pool per call, ~0.2 ms even for
        # one caption (2.6 ms on a loaded machine) against ~3 us here; it was 90% of a SigLiT step's data time.
        normalize, encode = self.normalize, self.processor.encode
        pieces = [encode(normalize(t)) for t in texts]
        return [ids[: self.context_length - 1] + [self.eos_id] for ids in pieces]

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        # padded in Python, then one tensor: a tensor op per caption cost more than encoding it
        pad, length = self.pad_id, self.context_length
        rows = [ids + [pad] * (length - len(ids)) for ids in self.encode(texts)]
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), length)

    # The processor is a C++ object: pickle the path (DataLoader workers, spawn) and reload.
    def __getstate__(self) -> dict:
        return {"model_path": self.model_path, "context_length": self.context_length}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def train_sentencepiece(
    captions: Iterable[str],
    model_path: Union[str, os.PathLike],
    vocab_size: int = 32000,
    model_type: str = "bpe",
) -> Path:
    """Train a SentencePiece model on ``captions`` (canonicalised) and write it to ``model_path``.

    BPE trains in seconds; ``hard_vocab_limit=False`` lets a low-diversity corpus end with fewer
    pieces than asked instead of failing. Written atomically so concurrent readers never see half.
    """
    return train_sentencepiece_file(
        captions, model_path, "a SentencePiece tokenizer", canonicalize, vocab_size=vocab_size,
        model_type=model_type, hard_vocab_limit=False, character_coverage=1.0, unk_id=UNK_ID, eos_id=EOS_ID,
        bos_id=-1, pad_id=-1)


def train_sentencepiece_file(captions: Iterable[str], model_path: Union[str, os.PathLike], what: str,
                             normalize: Callable[[str], str], **options) -> Path:
    """SentencePiece's trainer on the captions as the tokenizer will see them (``normalize``, the
    tokenizer's own text rule), empty ones left out, with ``options``; the model is written
    atomically to ``model_path`` (concurrent readers never see half a file)."""
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    texts = (text for text in (normalize(c) for c in captions if isinstance(c, str)) if text.strip())
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=texts, model_writer=buffer, minloglevel=2, **options)
    except RuntimeError as err:
        raise UserInputError(f"could not train {what} on the captions: {err}") from err
    with atomic_path(model_path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return model_path


class ClipTokenizer:
    """open_clip's CLIP BPE tokenizer (its vocabulary ships in the wheel: works offline).

    Lower-cased, ``<start_of_text> ... <end_of_text>``, then padded with ``<end_of_text>`` rather than
    0 so that the last position, which this project's text tower pools, is always the end token.

    Args:
        context_length: tokens per caption.
    """

    def __init__(self, context_length: int = 16) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        if context_length < 3:
            raise UserInputError(f"context_length must be at least 3 for the clip tokenizer, got {context_length}")
        self.context_length = context_length
        self.inner = SimpleTokenizer(context_length=context_length)
        self.eos_id = self.inner.eot_token_id
        self.pad_id = self.eos_id

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        ids = self.inner(texts)
        # id 0 is also a real token ("!"): pad by position, after each row's first end token
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        first_end = (ids == self.eos_id).int().argmax(dim=1, keepdim=True)
        ids[positions > first_end] = self.pad_id
        return ids
