"""``siglip-lightning cache-embeddings``: run a (locked) image tower once over a dataset, write parquet.

Takes the same config and overrides as ``fit`` (the model and data are built from them) plus the
options below; writes ``{split}-{index:05d}.parquet`` shards with columns ``id``, ``text`` and
``embedding`` that ``configs/siglit_precomputed.yaml`` trains on (see ``towers/precomputed.py``).
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import torch
from torch import nn

from siglip_lightning.atomic_files import atomic_path
from siglip_lightning.errors import UserInputError


def _batches(datamodule, split: str, batch_size: int) -> Iterator[Dict[str, list]]:
    """Decoded, eval-transformed (image, caption) batches of ``split``, in stored order."""
    from siglip_lightning.data.stream import decode_image

    stream = iter(datamodule.raw_split(split))
    while True:
        rows = list(itertools.islice(stream, batch_size))
        if not rows:
            return
        images, texts = [], []
        for row in rows:
            try:
                image = decode_image(row.get(datamodule.image_column))
            except Exception:  # unusable image bytes: the row is skipped, as in training
                continue
            images.append(datamodule.eval_transform(image))
            texts.append(row.get(datamodule.text_column))
        if images:
            yield {"image": torch.stack(images), "text": texts}


def write_shard(path: Path, ids: List[int], texts: list, embeddings: torch.Tensor) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = embeddings.shape[1]
    flat = pa.array(embeddings.float().reshape(-1).numpy(), type=pa.float32())
    table = pa.table({"id": pa.array(ids, pa.int64()), "text": texts,
                      "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


@torch.no_grad()
def cache_embeddings(image_tower: nn.Module, datamodule, out_dir, splits=("train", "validation"),
                     shard_size: int = 10_000, batch_size: int = 256, device: str = "cpu") -> Dict[str, int]:
    """Write the image tower's embeddings of every split to parquet shards; returns rows per split."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datamodule.prepare_data()
    datamodule.setup("fit")
    tower = image_tower.to(device).eval()
    available = datamodule.raw_split_names()
    counts: Dict[str, int] = {}
    for split in splits:
        if split not in available:
            continue
        shard, ids, texts, chunks, row = 0, [], [], [], 0
        for batch in _batches(datamodule, split, batch_size):
            chunks.append(tower(batch["image"].to(device)).float().cpu())
            texts += batch["text"]
            ids += list(range(row, row + len(batch["text"])))
            row += len(batch["text"])
            while len(ids) >= shard_size:
                embeddings = torch.cat(chunks)
                write_shard(out_dir / f"{split}-{shard:05d}.parquet", ids[:shard_size], texts[:shard_size],
                            embeddings[:shard_size])
                ids, texts, chunks, shard = ids[shard_size:], texts[shard_size:], [embeddings[shard_size:]], shard + 1
        if ids:
            write_shard(out_dir / f"{split}-{shard:05d}.parquet", ids, texts, torch.cat(chunks))
        counts[split] = row
    if not counts:
        raise UserInputError(f"none of the splits {list(splits)} is in the dataset (it has {sorted(available)})")
    return counts


def _add_options(parser) -> None:
    parser.add_argument("--out", type=str, required=True, help="output folder for the parquet shards")
    parser.add_argument("--splits", type=str, default="train,validation", help="comma-separated splits to cache")
    parser.add_argument("--shard_size", type=int, default=10_000, help="rows per parquet shard")
    parser.add_argument("--embed_batch_size", type=int, default=256, help="images per tower call")
    parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the tower runs")


def main(argv: Optional[List[str]] = None) -> None:
    """Same config and overrides as ``fit`` (model and data are built from them), plus ``_add_options``."""
    from siglip_lightning.cli import SigLIPCLI

    class CacheEmbeddingsCLI(SigLIPCLI):
        def add_arguments_to_parser(self, parser) -> None:
            super().add_arguments_to_parser(parser)
            _add_options(parser)

    cli = CacheEmbeddingsCLI(args=argv, run=False, parser_kwargs={"prog": "siglip-lightning cache-embeddings"})
    options = cli.config
    if options.shard_size < 1:
        raise UserInputError(f"--shard_size must be positive, got {options.shard_size}")
    counts = cache_embeddings(cli.model.image_tower, cli.datamodule, options.out, options.splits.split(","),
                              options.shard_size, options.embed_batch_size, options.device)
    print(f"cached {counts} image embeddings to {options.out}")
