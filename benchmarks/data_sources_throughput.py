"""Images/s of the training loader: one local source vs a 3-source mixture vs remote shards.

The same webdataset shards (JPEG 400x300 + caption, written by ``data_throughput.write_shards``)
are read through ``ImageTextDataModule`` five ways, alternating in one run: local files; a
mixture of three local sources (weights 0.6 / 0.3 / 0.1 over disjoint shard sets); ``http://``
from a file server on 127.0.0.1; ``s3://`` from moto's S3 server on 127.0.0.1 (s3fs); and HTTP
through a proxy that cuts every 4th transfer midway (retries). The remote servers are local
Python servers, so this measures the overhead of the remote read path (fsspec, the tar reader,
retries), not a real object store's bandwidth or latency.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/data_sources_throughput.py --samples 1200 --repeats 2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.data_throughput import timed, write_shards  # noqa: E402
from siglip_lightning.data.datamodule import ImageTextDataModule  # noqa: E402
from tests.helpers.remote_servers import FlakyProxy, S3Server, file_server  # noqa: E402


def loader(args, cache: str, **data):
    dm = ImageTextDataModule(batch_size=args.batch_size, num_workers=args.workers, image_size=args.image_size,
                             context_length=77, tokenizer_type="clip", shuffle_buffer=1000, cache_dir=cache,
                             retry_backoff=0.05, **data)
    dm.prepare_data()
    dm.setup("fit")
    return dm.train_dataloader()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1200)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--plot", default="docs/results/data_sources_throughput.png")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "wds"
        _, _, samples = write_shards(folder, args.samples, args.shards)
        names = sorted(p.name for p in folder.iterdir())
        last = args.shards - 1
        cache = str(Path(tmp) / "cache")
        http = file_server(folder)
        flaky = FlakyProxy(f"127.0.0.1:{http.server_address[1]}", drop_every=4)
        s3 = S3Server("bench")
        s3.upload(folder)
        os.environ.update(s3.env)
        third = max(1, args.shards // 4)
        mixture = [{"path": "::".join(str(folder / n) for n in names[: args.shards - 2 * third]), "weight": 0.6},
                   {"path": "::".join(str(folder / n) for n in names[args.shards - 2 * third: args.shards - third]),
                    "weight": 0.3},
                   {"path": "::".join(str(folder / n) for n in names[args.shards - third:]), "weight": 0.1}]
        pattern = f"shard-{{00000..{last:05d}}}.tar"
        setups = {
            "local, one source": {"path": str(folder / pattern)},
            "local, 3-source mixture": {"sources": mixture},
            "http:// (127.0.0.1)": {"path": f"http://127.0.0.1:{http.server_address[1]}/{pattern}"},
            "s3:// (moto, 127.0.0.1)": {"path": f"s3://bench/{pattern}"},
            "http://, every 4th transfer cut": {"path": f"{flaky.url}/{pattern}"},
        }
        results = {name: [] for name in setups}
        try:
            for _ in range(args.repeats):
                for name, data in setups.items():
                    results[name].append(timed(loader(args, cache, **data), args.batch_size))
        finally:
            flaky.shutdown()
            http.shutdown()
            s3.shutdown()
        print(f"{samples} JPEGs 400x300 in {args.shards} shards -> {args.image_size}px, batch {args.batch_size}, "
              f"{args.workers} workers, {os.cpu_count()} CPUs; proxy cut {flaky.dropped} transfers")
        print("| source | best img/s | vs local | images per pass | runs (img/s) |\n|---|---|---|---|---|")
        local = max(r[0] for r in results["local, one source"])
        for name, runs in results.items():
            best = max(r[0] for r in runs)
            print(f"| {name} | {best:.1f} | {best / local:.2f}x | {runs[0][2]} | "
                  f"{', '.join(f'{r[0]:.0f}' for r in runs)} |")
        if args.plot:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(7, 3))
            labels = list(results)
            ax.barh(labels[::-1], [max(r[0] for r in results[k]) for k in labels[::-1]], color="tab:blue")
            ax.set_xlabel("images/s (best of repeats)")
            ax.set_title(f"training loader, {args.image_size}px, {args.workers} workers")
            fig.tight_layout()
            Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(args.plot, dpi=120)
            print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
