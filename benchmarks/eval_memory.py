"""Peak memory of retrieval evaluation: chunked running top-k (this project) vs a dense score matrix.

The dense way (as in CLIP_benchmark / most training repos) builds the whole ``[captions, images]``
score matrix and a same-sized positive-pair mask; at 50k images x 5 captions that is 50 GB of
float32 scores. The chunked way keeps a ``query_chunk x key_chunk`` block and a running top-k.

Each measurement runs in a fresh process (so peaks do not mix); the peak RSS minus the RSS after
the embeddings are made is the evaluation's own memory. Both run on the same synthetic embeddings
(captions = their image's embedding + noise) and must give the same recalls. The dense way is
skipped where its matrices would exceed ``--dense-limit-gb`` (reported with the size it needs).

    python benchmarks/eval_memory.py --images 5000 10000 50000 --captions-per-image 5 --dim 64
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import torch
import torch.nn.functional as F


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def embeddings(num_images: int, per_image: int, dim: int):
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(num_images, dim, generator=generator), dim=-1)
    caption_image = torch.arange(num_images).repeat_interleave(per_image)
    noise = torch.randn(caption_image.shape[0], dim, generator=generator) * 1.5 / dim ** 0.5
    return images, F.normalize(images[caption_image] + noise, dim=-1), caption_image


def dense_recalls(images, texts, caption_image, ks):
    """The whole score matrix and a positive-pair mask, then top-k in both directions."""
    scores = texts @ images.T  # [captions, images]
    positive = torch.zeros(scores.shape, dtype=torch.bool)
    positive[torch.arange(scores.shape[0]), caption_image] = True
    out, k_max = {}, max(ks)
    t2i = positive.gather(1, scores.topk(k_max, dim=1).indices)
    i2t = positive.T.gather(1, scores.T.topk(k_max, dim=1).indices)
    for k in ks:
        out[f"image_to_text_R@{k}"] = float(i2t[:, :k].any(dim=1).double().mean())
        out[f"text_to_image_R@{k}"] = float(t2i[:, :k].any(dim=1).double().mean())
    return out


def measure(method: str, num_images: int, per_image: int, dim: int, queue) -> None:
    from siglip_lightning.eval.ranking import recall_at_k  # imported before the baseline: not eval memory

    images, texts, caption_image = embeddings(num_images, per_image, dim)
    baseline = rss_bytes()
    start = time.perf_counter()
    if method == "chunked":
        recalls = recall_at_k(images, texts, caption_image, (1, 5, 10))
    else:
        recalls = dense_recalls(images, texts, caption_image, (1, 5, 10))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put({"peak": peak, "overhead": peak - baseline, "seconds": seconds, "recalls": recalls})


def run(method: str, num_images: int, per_image: int, dim: int) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(method, num_images, per_image, dim, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[5000, 10000, 50000])
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dense-limit-gb", type=float, default=4.0)
    args = parser.parse_args()
    gb = 1024 ** 3
    print(f"{'images':>7} {'captions':>9} | {'chunked peak':>12} {'(+eval)':>9} {'s':>6} | "
          f"{'dense peak':>10} {'(+eval)':>9} {'s':>6} | dense/chunked (+eval)")
    for num_images in args.images:
        captions = num_images * args.captions_per_image
        chunked = run("chunked", num_images, args.captions_per_image, args.dim)
        dense_bytes = captions * num_images * 5  # float32 scores + bool mask
        line = (f"{num_images:>7} {captions:>9} | {chunked['peak'] / gb:>10.2f}GB {chunked['overhead'] / gb:>7.2f}GB "
                f"{chunked['seconds']:>6.1f} | ")
        if dense_bytes / gb > args.dense_limit_gb:
            line += f"skipped: its score matrix + mask need {dense_bytes / gb:.1f} GB"
        else:
            dense = run("dense", num_images, args.captions_per_image, args.dim)
            same = all(abs(dense["recalls"][k] - v) < 1e-12 for k, v in chunked["recalls"].items())
            line += (f"{dense['peak'] / gb:>8.2f}GB {dense['overhead'] / gb:>7.2f}GB {dense['seconds']:>6.1f} | "
                     f"{dense['overhead'] / max(chunked['overhead'], 1):.1f}x  recalls equal: {same}")
        print(line, flush=True)
        print("        recalls (chunked): " + ", ".join(f"{k} {v:.3f}" for k, v in chunked["recalls"].items()))


if __name__ == "__main__":
    main()
