"""Which tokenizer a run uses (``data.tokenizer_type``), built in one place for the datamodule.

- ``sentencepiece``: SigLIP's conventions over a SentencePiece model (``text/sentencepiece.py``), trained on
  the captions when ``data.tokenizer_path`` is not given;
- ``gemma``: SigLIP 2's conventions (pad id 0, EOS, no BOS) over a SentencePiece model with Gemma's
  special ids (``text/gemma.py``), trained likewise;
- ``clip``: open_clip's CLIP BPE (its vocabulary ships in the wheel);
- ``hf`` / ``open_clip``: the library's own tokenizer of a released checkpoint folder / model
  (``text/pretrained.py``), which ``--pretrained`` sets.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Optional

from siglip_lightning.text.gemma import GemmaStyleTokenizer, train_gemma_sentencepiece
from siglip_lightning.text.pretrained import pretrained_tokenizer
from siglip_lightning.text.interface import Tokenizer
from siglip_lightning.text.sentencepiece import ClipTokenizer, SentencePieceTokenizer, train_sentencepiece
from siglip_lightning.errors import UserInputError

TOKENIZER_TYPES = ("sentencepiece", "gemma", "clip", "hf", "open_clip")
TRAINED_TYPES = ("sentencepiece", "gemma")  # trained on the captions when no model file is given


def check_tokenizer_type(tokenizer_type: str, tokenizer_path: Optional[str]) -> None:
    if tokenizer_type not in TOKENIZER_TYPES:
        raise UserInputError(f"data.tokenizer_type must be one of {TOKENIZER_TYPES}, got {tokenizer_type!r}")
    if tokenizer_type in ("hf", "open_clip") and not tokenizer_path:
        raise UserInputError(f"data.tokenizer_type={tokenizer_type} needs data.tokenizer_path (the model folder)")


def train_tokenizer(tokenizer_type: str, captions: Iterable[str], model_file: Path, vocab_size: int) -> None:
    """Train the SentencePiece model of a ``TRAINED_TYPES`` tokenizer on ``captions``."""
    trainer = train_gemma_sentencepiece if tokenizer_type == "gemma" else train_sentencepiece
    trainer(captions, model_file, vocab_size)


def make_tokenizer(tokenizer_type: str, tokenizer_path: Optional[str], model_file: Path, context_length: int) -> Tokenizer:
    """The tokenizer of a run: ``model_file`` is the SentencePiece file of the trained types."""
    if tokenizer_type == "clip":
        return ClipTokenizer(context_length)
    if tokenizer_type in ("hf", "open_clip"):
        return pretrained_tokenizer(tokenizer_type, tokenizer_path, context_length)
    if tokenizer_type == "gemma":
        return GemmaStyleTokenizer(model_file, context_length)
    return SentencePieceTokenizer(model_file, context_length)


# Bumped whenever the text a trained tokenizer learns from changes, so stale cached models are not
# reused: sentencepiece 2 = trained on canonicalised captions (was: lower-cased only); gemma 2 =
# lower-cased character by character, <mask> a control symbol (never read from caption text).
TEXT_RULE_VERSION = {"sentencepiece": 2, "gemma": 2}


def trained_tokenizer_file(cache_dir: Path, tokenizer_type: str, vocab_size: int, key: list) -> Path:
    """Where a trained tokenizer is cached: one file per (data, caption fields, vocabulary, sample) ``key``
    and version of the tokenizer's text rule."""
    parts = [*key[:-1], vocab_size, key[-1]]
    version = TEXT_RULE_VERSION.get(tokenizer_type, 1)
    if version > 1:  # version 1 keys stay as they were: those cached files are still right
        parts.append(f"text-rule-{version}")
    digest = hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:12]
    kind = "gemma-" if tokenizer_type == "gemma" else ""
    return Path(cache_dir) / "tokenizers" / f"spm-{kind}{vocab_size}-{digest}.model"
