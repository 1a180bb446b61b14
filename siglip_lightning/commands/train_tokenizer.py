"""``siglip-lightning train-tokenizer``: a SentencePiece model from a dataset's captions.

    siglip-lightning train-tokenizer --data.path DATA --vocab_size 32000 --out tokenizer.model

SigLIP uses a 32k English vocabulary; mSigLIP a 250k multilingual one (``--vocab_size 250000``,
which needs a large, diverse caption sample: raise ``--samples``). Then train with
``--data.tokenizer_path tokenizer.model`` and a text tower whose ``vocab_size`` is at least as large.
"""
from __future__ import annotations

import itertools
from typing import Iterator, List, Literal, Optional

from jsonargparse import ArgumentParser

from siglip_lightning.data.sources import TEXT_COLUMNS, caption_strings, column_names, open_splits, pick_column
from siglip_lightning.text.sentencepiece import train_sentencepiece


def captions(path: str, text_column: Optional[str], split: str, limit: int) -> Iterator[str]:
    """Up to ``limit`` rows' captions (every caption of a list column), streamed; images are not decoded."""
    splits = open_splits(path)
    if split not in splits:
        from siglip_lightning.errors import UserInputError

        raise UserInputError(f"no split {split!r} in {path!r}: found {sorted(splits)} (--split)")
    stream = splits[split]
    column = pick_column(column_names(stream), text_column, TEXT_COLUMNS, "text", "--data.text_column")
    yield from caption_strings(row[column] for row in itertools.islice(stream.select_columns([column]), limit))


def main(argv: Optional[List[str]] = None) -> None:
    parser = ArgumentParser(prog="siglip-lightning train-tokenizer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data.path", type=str, required=True, help="dataset (same forms as fit's data.path)")
    parser.add_argument("--data.text_column", type=Optional[str], default=None, help="caption column")
    parser.add_argument("--split", type=str, default="train", help="split to read")
    parser.add_argument("--vocab_size", type=int, default=32000, help="32000 (SigLIP), 250000 (multilingual)")
    parser.add_argument("--samples", type=int, default=1_000_000, help="rows read")
    parser.add_argument("--model_type", type=Literal["bpe", "unigram"], default="bpe", help="bpe trains ~30x faster")
    parser.add_argument("--out", type=str, required=True, help="the .model file to write")
    args = parser.parse_args(argv)
    out = train_sentencepiece(captions(args.data.path, args.data.text_column, args.split, args.samples), args.out,
                              args.vocab_size, args.model_type)
    print(f"wrote {out}")
