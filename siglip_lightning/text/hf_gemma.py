"""The ``transformers`` side of SigLIP 2's tokenizer: a Gemma BPE tokenizer over a local SentencePiece model.

:func:`hf_gemma_tokenizer` reads the vocabulary and merges out of the ``.model`` (``transformers``'
own ``SentencePieceExtractor``) into a ``Siglip2Tokenizer`` (Gemma's tokenizer with lower-casing), set
to SigLIP 2's conventions: no BOS, EOS appended, right padding with ``<pad>`` (0) to the context
length. Its ids equal :class:`~siglip_lightning.text.gemma.GemmaStyleTokenizer`'s (tested).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, Optional


def hf_gemma_tokenizer(model_path, context_length: int = 64):
    """A ``transformers`` ``Siglip2Tokenizer`` with the vocabulary of the SentencePiece ``model_path``."""
    from tokenizers.models import BPE
    from transformers import Siglip2Tokenizer
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    extracted = SentencePieceExtractor(str(model_path)).extract(BPE)
    # no attention_mask in its outputs: our text tower attends to padding too (big_vision's), and
    # transformers masks it when handed a mask (the zero-shot pipeline passes whatever this returns)
    return Siglip2Tokenizer(vocab=extracted["vocab"], merges=extracted["merges"], add_bos_token=False,
                            add_eos_token=True, model_max_length=context_length, padding_side="right",
                            model_input_names=["input_ids"], split_special_tokens=True)


def save_gemma_tokenizer(model_path, out_dir, context_length: int = 64) -> None:
    """Write the ``transformers`` tokenizer files (and the raw ``tokenizer.model``) into ``out_dir``."""
    out_dir = Path(out_dir)
    shutil.copyfile(model_path, out_dir / "tokenizer.model")
    tokenizer = hf_gemma_tokenizer(model_path, context_length)
    tokenizer.save_pretrained(str(out_dir))
    # AutoProcessor pairs it with the image processor; the text defaults are SigLIP 2's
    config = {"processor_class": "Siglip2Processor"}
    (out_dir / "processor_config.json").write_text(json.dumps(config, indent=2))


def tokenizer_settings(folder, text_config: Dict) -> Dict:
    """What a fine-tune here needs to tokenize as the folder's model was trained.

    Returns ``context_length``, ``pad_id``, ``eos_id``, ``lower_case`` (SigLIP 2 lower-cases) and
    ``model_file`` (the SentencePiece ``tokenizer.model`` if the folder has one, else ``None``).
    """
    folder = Path(folder).expanduser()
    saved: Dict = {}
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        saved = json.loads(config_file.read_text())
    model_file: Optional[Path] = folder / "tokenizer.model"
    return {"context_length": text_config["context_length"], "pad_id": 0, "eos_id": 1, "lower_case": True,
            "add_bos_token": bool(saved.get("add_bos_token", False)),
            "model_file": str(model_file) if model_file.is_file() else None}
