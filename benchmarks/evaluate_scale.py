"""Time and peak memory of ``siglip-lightning evaluate`` on an ImageNet-val-sized synthetic imagefolder.

Writes ``--images`` small PNGs in ``--classes`` folders (ImageNet val: 50 000 in 1000), a tiny
SigLIP exported as a Hugging Face ``SiglipModel`` folder, and a one-task suite (zero-shot with
CLIP's 80 templates: 80 000 prompts embedded once), then runs the command in a fresh process and
reports its wall time and peak resident memory (VmHWM, from ``getrusage`` of the child).

    PYTHONPATH=. python benchmarks/evaluate_scale.py --images 50000 --classes 1000 --root /tmp/evaluate-scale
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def write_imagefolder(root: Path, images: int, classes: int, size: int) -> Path:
    folder = root / "val"
    if (folder / ".done").is_file():
        return folder
    rng = np.random.default_rng(0)
    for index in range(images):
        label = index % classes
        target = folder / f"n{label:08d}"
        target.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (target / f"val_{index:06d}.png").write_bytes(buffer.getvalue())
    (folder / ".done").write_text("")
    return folder


def write_model(root: Path, size: int) -> Path:
    """A tiny random SigLIP with a trained SentencePiece tokenizer, exported as a SiglipModel folder."""
    out = root / "tiny-siglip"
    if (out / "config.json").is_file():
        return out
    import torch

    from siglip_lightning import SigLIPModule, TextTower, VisionTower
    from siglip_lightning.text.sentencepiece import train_sentencepiece
    from siglip_lightning.interop.export import export_module

    captions = [f"a photo of a class {i} thing number {j}" for i in range(200) for j in range(5)]
    spm = train_sentencepiece(captions, root / "spm.model", vocab_size=256)
    torch.manual_seed(0)
    module = SigLIPModule(VisionTower(image_size=size, patch_size=8, width=64, layers=2, heads=2, output_dim=64),
                          TextTower(vocab_size=256, context_length=16, width=64, layers=2, heads=2, output_dim=64))
    export_module(module, "hf", out, tokenizer_model=str(spm))
    from transformers import SiglipImageProcessor  # SigLIP's: resize to the square, x/255, mean = std = 0.5

    SiglipImageProcessor(size={"height": size, "width": size}).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (also the model's)")
    parser.add_argument("--root", default="/tmp/evaluate-scale")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--num_workers", type=int, default=1)
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    folder = write_imagefolder(root, args.images, args.classes, args.size)
    model = write_model(root, args.size)
    print(f"data + model ready in {time.perf_counter() - start:.0f} s")
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump({"tasks": [{"name": "imagenet_sized", "task": "zeroshot", "path": str(folder),
                                                "templates": "openai", "batch_size": args.batch_size,
                                                "num_workers": args.num_workers}]}))
    command = [sys.executable, "-m", "siglip_lightning", "evaluate", "--model", str(model), "--suite", str(suite),
               "--out", str(root / "results"), "--device", "cpu"]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=dict(os.environ))
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux: the child's VmHWM
    print(f"evaluate: {args.images} images, {args.classes} classes x 80 templates: {seconds:.0f} s wall, "
          f"{args.images / seconds:.0f} images/s, peak RSS (VmHWM) {peak_kb / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
