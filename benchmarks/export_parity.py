"""Zero-shot top-1 of one trained run scored three ways: our ZeroShotClassification callback, the
transformers zero-shot pipeline on its ``--format hf`` export, and CLIP_benchmark on its
``--format open_clip`` export. The three must agree within 0.5 top-1 points.

Data: scikit-learn's bundled copy of the UCI "Optical Recognition of Handwritten Digits" test set
(``sklearn.datasets.load_digits``: 1797 8x8 images of 16 grey levels, digits 0-9, written by 43 people;
Alpaydin & Kaynak 1998), upscaled 4x (nearest) to 32x32 RGB so that every library's resize to the
model's 32 px is the identity. A seeded 300-image split is held out for evaluation; the other images
train a quickstart-sized run (configs/quickstart.yaml, 600 steps, 64 text positions so the pipeline
runs) through ``siglip-lightning fit`` on captions with capitals and punctuation.

    python benchmarks/export_parity.py --out runs/export_parity      # ~10 min on 2 busy CPU cores

The hf and open_clip arms run in processes that never import siglip_lightning.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = [str(d) for d in range(10)]
TEMPLATE = "a photo of the digit {}."
CAPTIONS = ["a photo of the digit {}.", "A handwritten {}!", "Digit: {} -- handwritten, scanned.",
            "The number {} (written by hand)."]
HELD_OUT = 300


def write_digits(out: Path, seed: int = 0) -> tuple:
    """Train (captioned) and held-out (labelled) parquet folders of the upscaled digits."""
    import datasets
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    png = []
    for pixels in digits.images:
        grey = Image.fromarray((pixels * 255 / 16).round().astype(np.uint8), mode="L")
        buffer = io.BytesIO()
        grey.resize((32, 32), Image.Resampling.NEAREST).convert("RGB").save(buffer, format="PNG")
        png.append(buffer.getvalue())
    held, train = order[:HELD_OUT], order[HELD_OUT:]
    train_dir, eval_dir = out / "train", out / "eval"
    train_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    image = datasets.Image()
    datasets.Dataset.from_dict(
        {"image": [{"bytes": png[i], "path": None} for i in train],
         "text": [CAPTIONS[k % len(CAPTIONS)].format(digits.target[i]) for k, i in enumerate(train)]},
        features=datasets.Features({"image": image, "text": datasets.Value("string")}),
    ).to_parquet(str(train_dir / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_dict(
        {"image": [{"bytes": png[i], "path": None} for i in held], "label": [int(digits.target[i]) for i in held]},
        features=datasets.Features({"image": image, "label": datasets.ClassLabel(names=CLASSES)}),
    ).to_parquet(str(eval_dir / "test-00000-of-00001.parquet"))
    return train_dir, eval_dir, [png[i] for i in held], [int(digits.target[i]) for i in held]


def run_config(out: Path, eval_dir: Path) -> Path:
    """Callbacks and logger of the run: our zero-shot callback on the held-out digits, a CSV log."""
    config = {"trainer": {
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(out / "run")}},
        "callbacks": [
            {"class_path": "siglip_lightning.eval.ZeroShotClassification",
             "init_args": {"name": "digits", "path": str(eval_dir), "class_names": CLASSES, "templates": [TEMPLATE]}},
            {"class_path": "siglip_lightning.checkpointing.ResumableCheckpoint", "init_args": {"save_last": True}}]}}
    path = out / "parity.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def cli(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "siglip_lightning", *args], cwd=REPO, env=env, check=True)


def peer(script: str, payload: dict) -> dict:
    """A fresh process without siglip_lightning on its path; the answer is its last stdout line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    guard = "\nassert 'siglip_lightning' not in sys.modules\n"
    done = subprocess.run([sys.executable, "-c", script + guard, json.dumps(payload)], env=env, cwd="/",
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


HF_PIPELINE = """
import io, json, sys
from PIL import Image
from transformers import pipeline
args = json.loads(sys.argv[1])
classify = pipeline("zero-shot-image-classification", model=args["folder"])
images = [Image.open(p) for p in args["paths"]]
ranked = classify(images, candidate_labels=args["classes"], hypothesis_template=args["template"], batch_size=64)
top1 = [r[0]["label"] for r in ranked]
print(json.dumps({"top1": sum(t == args["classes"][y] for t, y in zip(top1, args["labels"])) / len(top1)}))
"""

CLIP_BENCHMARK = """
import json, sys
import torch
from PIL import Image
import open_clip
from clip_benchmark.metrics import zeroshot_classification

def accuracy(output, target, topk=(1,)):  # numpy>=2.4-safe copy of clip_benchmark's (float() of an array)
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]
zeroshot_classification.accuracy = accuracy

args = json.loads(sys.argv[1])
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + args["folder"])
tokenizer = open_clip.get_tokenizer("local-dir:" + args["folder"])

class Digits(torch.utils.data.Dataset):
    classes = args["classes"]
    def __len__(self):
        return len(args["paths"])
    def __getitem__(self, i):
        return preprocess(Image.open(args["paths"][i])), args["labels"][i]

loader = torch.utils.data.DataLoader(Digits(), batch_size=64)
metrics = zeroshot_classification.evaluate(model.eval(), loader, tokenizer, args["classes"],
                                           [args["template"].replace("{}", "{c}")], "cpu", amp=False)
print(json.dumps({"top1": metrics["acc1"], "top5": metrics["acc5"]}))
"""


def callback_top1(run_dir: Path) -> float:
    """The last ``zeroshot/digits/top1`` our callback logged."""
    import csv

    rows = [row for log in sorted(run_dir.rglob("metrics.csv")) for row in csv.DictReader(log.open())]
    values = [float(row["zeroshot/digits/top1"]) for row in rows if row.get("zeroshot/digits/top1")]
    if not values:
        raise RuntimeError(f"no zeroshot/digits/top1 logged under {run_dir}")
    return values[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "export_parity")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    out = args.out.resolve()
    train_dir, eval_dir, held_png, labels = write_digits(out)
    paths = []
    for i, data in enumerate(held_png):
        paths.append(out / "eval_png" / f"{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        paths[-1].write_bytes(data)
    cli("fit", f"--config={REPO / 'configs' / 'quickstart.yaml'}", f"--config={run_config(out, eval_dir)}",
        f"--data.path={train_dir}", "--model.text_tower.init_args.context_length=64", "--data.context_length=64",
        f"--trainer.max_steps={args.steps}", f"--trainer.val_check_interval={args.steps}", "--data.val_fraction=0.05",
        f"--trainer.default_root_dir={out / 'run'}")
    ckpt = out / "run" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        ckpt = sorted((out / "run").rglob("*.ckpt"))[-1]
    for fmt in ("hf", "open_clip"):
        cli("export", f"--ckpt_path={ckpt}", f"--format={fmt}", f"--out={out / fmt}")
    payload = {"paths": [str(p) for p in paths], "labels": labels, "classes": CLASSES, "template": TEMPLATE}
    result = {"images": len(labels), "steps": args.steps, "callback_top1": callback_top1(out / "run"),
              "hf_pipeline_top1": peer(HF_PIPELINE, {**payload, "folder": str(out / "hf")})["top1"],
              "clip_benchmark_top1": peer(CLIP_BENCHMARK, {**payload, "folder": str(out / "open_clip")})["top1"]}
    tops = [result[k] for k in ("callback_top1", "hf_pipeline_top1", "clip_benchmark_top1")]
    result["max_gap_points"] = round(100 * (max(tops) - min(tops)), 3)
    result["agree_within_0.5_points"] = result["max_gap_points"] <= 0.5
    print(json.dumps(result, indent=2))
    (out / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
