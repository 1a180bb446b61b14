"""SigLiT with precomputed image embeddings: run the locked image tower once, train only the text tower.

    siglip-lightning cache-embeddings --config configs/siglit.yaml --out data/siglit-cache
    siglip-lightning fit --config configs/siglit_precomputed.yaml --data.path data/siglit-cache

``cache-embeddings`` builds the run's model and data from the same config as ``fit`` (any
``--key value`` override works), streams each split in order (no shuffle, eval transform), runs the
image tower without autograd and writes parquet shards ``{split}-{index:05d}.parquet`` with columns
``id`` (row number in the split), ``text`` (the caption as stored) and ``embedding`` (the tower's
output before normalisation, float32). That folder is an ordinary dataset: the datamodule streams,
shards and shuffles it, and an embedding column is passed through as the "image" (no decoding).
:class:`PrecomputedImageTower` then hands the embeddings to the loss, so a step costs the text tower.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import torch
from torch import nn

from siglip_lightning.errors import UserInputError


class PrecomputedImageTower(nn.Module):
    """The image "tower" of a SigLiT run on cached embeddings: returns its input ``[b, dim]``.

    Args:
        dim: embedding size stored in the cache (the locked tower's output size).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.output_dim = dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or embeddings.shape[-1] != self.output_dim:
            raise UserInputError(
                f"PrecomputedImageTower(dim={self.output_dim}) got inputs of shape {tuple(embeddings.shape)}: "
                "point data.path at a cache-embeddings folder and set data.image_column: embedding")
        return embeddings.float()


def _batches(datamodule, split: str, batch_size: int) -> Iterator[Dict[str, list]]:
    """Decoded, eval-transformed (image, caption) batches of ``split``, in stored order."""
    from siglip_lightning.data.stream import decode_image

    stream = iter(datamodule._open()[split])
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
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


@torch.no_grad()
def cache_embeddings(image_tower: nn.Module, datamodule, out_dir, splits=("train", "validation"),
                     shard_size: int = 10_000, batch_size: int = 256, device: str = "cpu") -> Dict[str, int]:
    """Write the image tower's embeddings of every split to parquet shards; returns rows per split."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datamodule.prepare_data()
    datamodule.setup("fit")
    tower = image_tower.to(device).eval()
    available = datamodule._open()
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


def cache_main(argv: Optional[List[str]] = None) -> None:
    """``siglip-lightning cache-embeddings``: same config and overrides as ``fit``, plus the options below."""
    parser = argparse.ArgumentParser(prog="siglip-lightning cache-embeddings",
                                     description="Run the image tower once over a dataset and cache its embeddings.")
    parser.add_argument("--out", required=True, help="output folder for the parquet shards")
    parser.add_argument("--splits", default="train,validation", help="comma-separated splits to cache")
    parser.add_argument("--shard_size", type=int, default=10_000, help="rows per parquet shard")
    parser.add_argument("--embed_batch_size", type=int, default=256, help="images per tower call")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, rest = parser.parse_known_args(argv)
    if args.shard_size < 1:
        raise UserInputError(f"--shard_size must be positive, got {args.shard_size}")
    from siglip_lightning.cli import cli_main

    cli = cli_main(rest, run=False)
    counts = cache_embeddings(cli.model.image_tower, cli.datamodule, args.out, args.splits.split(","),
                              args.shard_size, args.embed_batch_size, args.device)
    print(f"cached {counts} image embeddings to {args.out}")
