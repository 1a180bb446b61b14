"""Images/s through decode + transform + tokenize + collate: this datamodule vs open_clip's wds pipeline.

Both read the same local webdataset shards with the same number of DataLoader workers, batch size
and tokenizer (open_clip's CLIP BPE, so the tokenizers do the same work), in one run, alternating
repeats. open_clip's pipeline is ``open_clip_train.data.get_wds_dataset`` (webdataset: shard
shuffle, split by node/worker, tar -> samples, shuffle buffer, decode "pilrgb", its eval image
transform: resize shorter side + centre crop, tokenize, batch). Ours: ``ImageTextDataModule``
(datasets streaming, seeded shuffle buffer, JPEG draft decode, square resize to [-1, 1]).

Then the training-step rate of the quickstart model (configs/quickstart.yaml towers and batch) on
this machine, next to what the datamodule delivers for that config (built-in data, 32 px).

    python benchmarks/data_throughput.py --workers 2 --samples 2000
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from siglip_lightning.data.datamodule import ImageTextDataModule  # noqa: E402
from siglip_lightning.data.synthetic import ShapesSpec  # noqa: E402


def write_shards(folder: Path, samples: int, shards: int, size=(400, 300)) -> str:
    """JPEG photos-like images (smooth colour fields + noise) with captions, ``shards`` tar files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]] / max(size)
    per = samples // shards
    words = "a photo of the red green blue dog cat car tree house on in with big small".split()
    for s in range(shards):
        with tarfile.open(folder / f"shard-{s:05d}.tar", "w") as tar:
            for i in range(per):
                c = rng.uniform(0, 255, size=(3, 3))
                img = np.stack([c[k, 0] + c[k, 1] * xx + c[k, 2] * yy for k in range(3)], -1) % 255
                img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=90)
                caption = " ".join(rng.choice(words, size=int(rng.integers(5, 15))))
                for ext, data in (("jpg", buf.getvalue()), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{s:05d}{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"shard-{{00000..{shards - 1:05d}}}.tar"), str(folder / "shard-*.tar"), per * shards


def timed(loader, batch_size: int):
    """(images/s after the first batch, seconds to the first batch, images)."""
    start = time.perf_counter()
    first = None
    count = 0
    for batch in loader:
        images = batch["image"] if isinstance(batch, dict) else batch[0]
        count += images.shape[0]
        if first is None:
            first, first_count = time.perf_counter(), count
    end = time.perf_counter()
    return (count - first_count) / max(end - first, 1e-9), first - start, count


def ours_loader(pattern: str, args, cache: str):
    dm = ImageTextDataModule(path=pattern, batch_size=args.batch_size, num_workers=args.workers,
                             image_size=args.image_size, context_length=77, tokenizer_type="clip",
                             shuffle_buffer=1000, cache_dir=cache)
    dm.prepare_data()
    dm.setup("fit")
    return dm.train_dataloader()


def open_clip_loader(brace: str, samples: int, args):
    import functools

    import open_clip
    import open_clip_train.data as oc_data
    from webdataset.tariterators import tar_file_expander

    # open-clip-torch[training] pins webdataset<=0.2.86; this venv has webdataset 1.x, whose tar
    # expander yields an empty {} end-of-shard marker that open_clip's group_by_keys_nothrow cannot
    # read (KeyError 'fname'). Turning the marker off restores 0.2.x behaviour; the work is unchanged.
    oc_data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)
    get_wds_dataset = oc_data.get_wds_dataset

    ns = SimpleNamespace(train_data=brace, train_num_samples=samples, dataset_resampled=False, seed=0,
                         batch_size=args.batch_size, workers=args.workers, world_size=1,
                         train_data_upsampling_factors=None)
    preprocess = open_clip.image_transform(args.image_size, is_train=False)
    info = get_wds_dataset(ns, preprocess, is_train=True, epoch=0, floor=True, tokenizer=open_clip.tokenize)
    return info.dataloader


def quickstart_rates(workers: int, cache: str, steps: int = 20):
    """(training steps/s * batch = images/s of the quickstart model, datamodule images/s at 32 px)."""
    import yaml
    from jsonargparse import ArgumentParser

    from siglip_lightning.model.module import SigLIPModule

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml").read_text())
    parser = ArgumentParser()
    parser.add_class_arguments(SigLIPModule, "model")
    cfg = parser.instantiate_classes(parser.parse_object({"model": config["model"]}))
    model = cfg.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = config["data"]
    batch = {"image": torch.randn(data["batch_size"], 3, data["image_size"], data["image_size"]),
             "text": torch.randint(0, 512, (data["batch_size"], data["context_length"]))}
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        loss = model.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    step_rate = steps * data["batch_size"] / (time.perf_counter() - start)
    # the built-in shapes at a smaller size than quickstart's 50k: the same images, generated faster
    dm = ImageTextDataModule(path="builtin", batch_size=data["batch_size"], num_workers=workers,
                             image_size=data["image_size"], context_length=data["context_length"],
                             vocab_size=data["vocab_size"], cache_dir=cache,
                             builtin=ShapesSpec(num_train=8 * data["batch_size"] * 8, num_shards=8))
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    count, start = 0, None
    for batch in loader:
        if start is None:
            start = time.perf_counter()
        else:
            count += batch["image"].shape[0]
        if count >= 40 * data["batch_size"]:
            break
    return step_rate, count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip_quickstart", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(1)  # the workers do the work; keep the main process from competing
    with tempfile.TemporaryDirectory() as tmp:
        brace, glob_pattern, samples = write_shards(Path(tmp) / "wds", args.samples, args.shards)
        cache = str(Path(tmp) / "cache")
        results = {"ours": [], "open_clip": []}
        for _ in range(args.repeats):
            results["ours"].append(timed(ours_loader(glob_pattern, args, cache), args.batch_size))
            results["open_clip"].append(timed(open_clip_loader(brace, samples, args), args.batch_size))
        print(f"{samples} JPEGs 400x300 in {args.shards} shards -> {args.image_size}px, batch {args.batch_size}, "
              f"{args.workers} workers, {os.cpu_count()} CPUs")
        best = {}
        for name, runs in results.items():
            best[name] = max(r[0] for r in runs)
            detail = ", ".join(f"{r[0]:.0f} img/s ({r[2]} images, first batch {r[1]:.1f}s)" for r in runs)
            print(f"  {name:10s} best {best[name]:7.1f} img/s   runs: {detail}")
        print(f"  ratio ours / open_clip: {best['ours'] / best['open_clip']:.2f}x")
        if not args.skip_quickstart:
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - args.workers))
            step_rate, data_rate = quickstart_rates(args.workers, cache)
            print(f"quickstart model training step (CPU, {torch.get_num_threads()} threads): {step_rate:.0f} img/s; "
                  f"datamodule on the built-in data at 32 px, {args.workers} workers: {data_rate:.0f} img/s "
                  f"({data_rate / step_rate:.1f}x the step's consumption)")


if __name__ == "__main__":
    main()
