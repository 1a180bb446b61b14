"""``siglip-lightning cache-embeddings``: run a (locked) image tower once over a dataset, write parquet.

Takes the same config and overrides as ``fit`` (the model and data are built from them) plus the
options below; writes ``{split}-{index:05d}.parquet`` shards with columns ``id``, ``text`` and
``embedding`` that ``configs/siglit_precomputed.yaml`` trains on (see ``towers/precomputed.py``).
The tower's weights are the config's (``--model.init_from CKPT`` loads a trained run's). Optionally also:
``--zeroshot_out DIR`` embeds a labelled image set (default: the built-in zero-shot set) for
``ZeroShotClassification`` on embeddings, and ``--noise_out DIR`` embeds uniform-noise images, the
bank that ``data.corruption`` (kind ``image``) draws from on embedding data.
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


@torch.no_grad()
def cache_zeroshot(image_tower: nn.Module, datamodule, path: Optional[str], out_dir, batch_size: int = 256,
                   device: str = "cpu", label_column: str = "label", image_column: str = "image") -> int:
    """Embed a labelled image set (``path``; ``None``: the built-in zero-shot set) into ``out_dir``:
    parquet with ``embedding`` and ``label`` (its class names kept), plus ``templates.txt`` when known."""
    import datasets

    from siglip_lightning.data.stream import decode_image
    from siglip_lightning.eval.loading import open_eval_split

    templates = None
    if path is None:
        builtin = datamodule.builtin_zeroshot()
        if builtin is None:
            raise UserInputError("--zeroshot_out needs --zeroshot_path (the data is not the built-in set)")
        path, _, templates = builtin
    stream = open_eval_split(path, None, "cache-embeddings --zeroshot_path")
    features = stream.features or {}
    if isinstance(features.get(image_column), datasets.Image):
        stream = stream.cast_column(image_column, datasets.Image(decode=False))
    label_feature = features.get(label_column)
    tower = image_tower.to(device).eval()
    embeddings, labels, images = [], [], []
    for row in stream:
        images.append(datamodule.eval_transform(decode_image(row[image_column])))
        labels.append(int(row[label_column]))
        if len(images) == batch_size:
            embeddings.append(tower(torch.stack(images).to(device)).float().cpu())
            images = []
    if images:
        embeddings.append(tower(torch.stack(images).to(device)).float().cpu())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = torch.cat(embeddings)
    label_type = label_feature if isinstance(label_feature, datasets.ClassLabel) else datasets.Value("int64")
    table = datasets.Dataset.from_dict(
        {"embedding": flat.numpy().tolist(), "label": labels},
        features=datasets.Features({"embedding": datasets.Sequence(datasets.Value("float32")), "label": label_type}))
    with atomic_path(out_dir / "test-00000.parquet") as tmp:
        table.to_parquet(str(tmp))
    if templates:
        (out_dir.parent / f"{out_dir.name}_templates.txt").write_text("\n".join(templates) + "\n")
    return len(labels)


@torch.no_grad()
def cache_noise(image_tower: nn.Module, datamodule, count: int, out_dir, seed: int = 0, device: str = "cpu") -> None:
    """Embed ``count`` uniform-noise images (paper Fig. 7's image corruption) into ``out_dir``."""
    from PIL import Image
    import numpy as np

    size = getattr(datamodule.eval_transform, "image_size", 32)
    pixels = np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    tower = image_tower.to(device).eval()
    images = torch.stack([datamodule.eval_transform(Image.fromarray(p)) for p in pixels])
    embeddings = torch.cat([tower(chunk.to(device)).float().cpu() for chunk in images.split(256)])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_shard(Path(out_dir) / "noise-00000.parquet", list(range(count)), ["noise"] * count, embeddings)


def _add_options(parser) -> None:
    parser.add_argument("--out", type=str, required=True, help="output folder for the parquet shards")
    parser.add_argument("--splits", type=str, default="train,validation", help="comma-separated splits to cache")
    parser.add_argument("--shard_size", type=int, default=10_000, help="rows per parquet shard")
    parser.add_argument("--embed_batch_size", type=int, default=256, help="images per tower call")
    parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the tower runs")
    parser.add_argument("--zeroshot_out", type=Optional[str], default=None,
                        help="also embed a labelled image set into this folder (embedding, label)")
    parser.add_argument("--zeroshot_path", type=Optional[str], default=None,
                        help="that labelled set (default: the built-in zero-shot set)")
    parser.add_argument("--noise_out", type=Optional[str], default=None,
                        help="also embed --noise_images uniform-noise images into this folder")
    parser.add_argument("--noise_images", type=int, default=1024, help="how many noise images")


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
    if cli.model.hparams.get("init_from"):  # fit loads it at setup; here the tower is used directly
        from siglip_lightning.model.init_from import load_initial_weights

        load_initial_weights(cli.model, cli.model.hparams.init_from)
    counts = cache_embeddings(cli.model.image_tower, cli.datamodule, options.out, options.splits.split(","),
                              options.shard_size, options.embed_batch_size, options.device)
    print(f"cached {counts} image embeddings to {options.out}")
    if options.zeroshot_out:
        rows = cache_zeroshot(cli.model.image_tower, cli.datamodule, options.zeroshot_path, options.zeroshot_out,
                              options.embed_batch_size, options.device)
        print(f"cached {rows} zero-shot image embeddings to {options.zeroshot_out}")
    if options.noise_out:
        cache_noise(cli.model.image_tower, cli.datamodule, options.noise_images, options.noise_out,
                    device=options.device)
        print(f"cached {options.noise_images} noise-image embeddings to {options.noise_out}")
