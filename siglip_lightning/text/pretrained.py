"""The tokenizer a released checkpoint was trained with, used as is (``data.tokenizer_type`` ``hf`` / ``open_clip``).

A fine-tuned model only keeps its zero-shot ability if it sees captions tokenised exactly as in
pre-training. Rather than re-implementing each checkpoint's text cleaning (SigLIP's
``SiglipTokenizer`` lower-cases, strips punctuation, collapses whitespace, appends ``</s>`` and pads
with it; open_clip's SigLIP models run the same through its ``HFTokenizer`` with
``clean='canonicalize'``), these classes call the library's own tokenizer for the folder, so the ids
are the library's by construction; ``tests/interop/test_pretrained_finetune.py`` checks them on
awkward captions all the same.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch

from siglip_lightning.errors import UserInputError


def require_tokenizer_files(folder: Path, names: Sequence[str]) -> None:
    """Stop, naming the files, when a released folder carries none of its tokenizer files: training a new
    tokenizer instead could never match the pretrained text tower's embeddings."""
    if not any((Path(folder) / name).is_file() for name in names):
        raise UserInputError(f"{folder} has no tokenizer ({', '.join(names)}): --pretrained needs the tokenizer "
                             "the model was trained with; copy it next to config.json")


class HFTokenizer:
    """``transformers.AutoTokenizer`` of a local model folder, padded / truncated to ``context_length``.

    Args:
        path: the model folder (``tokenizer_config.json`` + ``spiece.model`` or ``tokenizer.json``).
        context_length: tokens per caption (SigLIP's released models: 64).
    """

    def __init__(self, path: str, context_length: int = 64) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError as err:
            raise UserInputError("data.tokenizer_type=hf needs transformers: pip install 'siglip-lightning[interop]'") from err
        if not Path(path).expanduser().is_dir():
            raise UserInputError(f"tokenizer folder not found: {path} (data.tokenizer_path)")
        self.path, self.context_length = str(path), context_length
        self.inner = AutoTokenizer.from_pretrained(str(Path(path).expanduser()), local_files_only=True)
        self.eos_id = self.inner.eos_token_id
        self.pad_id = self.inner.pad_token_id if self.inner.pad_token_id is not None else self.eos_id

    @property
    def vocab_size(self) -> int:
        return len(self.inner)

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self.inner(list(texts), padding="max_length", max_length=self.context_length, truncation=True,
                          return_tensors="pt")["input_ids"].long()

    def __getstate__(self) -> dict:  # DataLoader workers: reload from the folder
        return {"path": self.path, "context_length": self.context_length}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


class OpenCLIPTokenizer:
    """``open_clip.get_tokenizer(model_name)``, exactly as open_clip tokenises for that model.

    Args:
        model_name: an open_clip model name (``local-dir:FOLDER`` for a local model).
        context_length: tokens per caption.
    """

    def __init__(self, model_name: str, context_length: int = 64) -> None:
        import open_clip

        self.model_name, self.context_length = model_name, context_length
        self.inner = open_clip.get_tokenizer(model_name, context_length=context_length)
        hf = getattr(self.inner, "tokenizer", None)
        self.eos_id = hf.eos_token_id if hf is not None else self.inner.eot_token_id
        self.pad_id = (hf.pad_token_id if hf is not None else 0)

    @property
    def vocab_size(self) -> int:
        hf = getattr(self.inner, "tokenizer", None)
        return len(hf) if hf is not None else self.inner.vocab_size

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        return self.inner(texts if isinstance(texts, str) else list(texts)).long()

    def __getstate__(self) -> dict:
        return {"model_name": self.model_name, "context_length": self.context_length}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def pretrained_tokenizer(kind: str, path: str, context_length: int):
    """``hf`` -> :class:`HFTokenizer` of folder ``path``; ``open_clip`` -> :class:`OpenCLIPTokenizer` of model ``path``."""
    return HFTokenizer(path, context_length) if kind == "hf" else OpenCLIPTokenizer(path, context_length)
