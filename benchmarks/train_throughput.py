"""Training throughput on this CPU: a `siglip-lightning fit` step vs a plain PyTorch loop vs open_clip's loop.

    python benchmarks/train_throughput.py [--steps 30] [--repeats 3] [--batch_size 128] [--threads 1]

All three train the same model (the quickstart towers: ViT 32 px / patch 8 / width 64 / 2 layers
with a MAP head; text 16 tokens / width 64 / 2 layers; vocab 512) from the same initial weights, on
the same pre-made in-memory batches (random images and token ids: the content does not change
the cost), with AdamW (betas 0.9/0.95, wd 0.1 on matrices) and warmup + cosine. Ours (lightning,
plain) is `SigLIPModule.configure_optimizers`: fused AdamW on plain CPU/CUDA tensors; open_clip's
loops build open_clip's own (per-tensor) AdamW, as `open_clip_train.main` does:

- lightning: `lightning.Trainer.fit` of `SigLIPModule` (what `siglip-lightning fit` runs; its
  per-step logging of loss, t, b and lr included; no checkpoints, progress bar or logger files);
- plain: a hand-written loop over the same `SigLIPModule` (forward, loss, backward, step, schedule);
- open_clip: `open_clip_train.train.train_one_epoch` (open_clip's own training loop, `--siglip`),
  with the model exported to open_clip (`CustomTextCLIP`: timm ViT + TextTransformer, identical
  weights) and its `SigLipLoss`;
- oc_loop: open_clip's same loop and loss driving *our* model (isolates the loop from the model code).

Step time = the interval between two consecutive batch fetches (each loop fetches once per step),
after 3 warm-up steps; `--repeats` runs of each, in rotating order so that load from other
processes hits all three alike; the median over all timed steps is reported.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from siglip_lightning import SigLIPModule, SigmoidLoss, TextTower, VisionTower  # noqa: E402

WARMUP = 3


def make_module(seed: int = 0) -> SigLIPModule:
    torch.manual_seed(seed)
    return SigLIPModule(VisionTower(image_size=32, patch_size=8, width=64, layers=2, heads=4),
                        TextTower(vocab_size=512, context_length=16, width=64, layers=2, heads=4, output_dim=64),
                        loss=SigmoidLoss(), lr=1e-3, weight_decay=0.1, warmup_steps=10, total_steps=10_000)


def make_batches(n: int, batch_size: int):
    gen = torch.Generator().manual_seed(123)
    return [{"image": torch.randn(batch_size, 3, 32, 32, generator=gen),
             "text": torch.randint(0, 512, (batch_size, 16), generator=gen)} for _ in range(n)]


class Stamped(torch.utils.data.IterableDataset):
    """Yields the batches and records when each was fetched: fetch-to-fetch intervals are step times
    measured the same way for all three loops (each fetches the next batch once per step)."""

    def __init__(self, batches) -> None:
        self.batches, self.stamps = batches, []

    def __iter__(self):
        for batch in self.batches:
            self.stamps.append(time.perf_counter())
            yield batch
        self.stamps.append(time.perf_counter())

    def step_times(self) -> list:
        return [b - a for a, b in zip(self.stamps[WARMUP:], self.stamps[WARMUP + 1:])]


def time_plain(batches) -> list:
    module = make_module().train()
    # the module's own optimizer and schedule (fused AdamW where it applies), as Lightning uses them
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    stamped = Stamped(batches)
    for batch in stamped:
        optimizer.zero_grad(set_to_none=True)
        loss = module.compute_loss(batch)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return stamped.step_times()


def time_lightning(batches) -> list:
    import lightning as L
    from torch.utils.data import DataLoader

    module = make_module()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0)
    stamped = Stamped(batches)
    trainer.fit(module, train_dataloaders=DataLoader(stamped, batch_size=None))
    return stamped.step_times()


class _Loader:
    """What open_clip's loop reads from ``data['train']`` (its batches are (images, texts) tuples)."""

    def __init__(self, batches):
        self.stamped = Stamped([(b["image"], b["text"]) for b in batches])
        self.num_batches = len(batches)
        self.num_samples = len(batches) * batches[0]["image"].shape[0]
        self.dataloader = self

    def __iter__(self):
        return iter(self.stamped)

    def set_epoch(self, epoch):
        pass


def open_clip_setup(batch_size: int, workdir: Path):
    """(model, args, loss) for open_clip's loop, the model exported from ours (same weights)."""
    import open_clip
    from open_clip_train.params import parse_args

    from siglip_lightning.interop.export import export_module
    from siglip_lightning.interop.openclip import create_open_clip

    export_module(make_module(), "open_clip", workdir / "oc")
    model = create_open_clip(f"local-dir:{workdir / 'oc'}").train()
    model.output_dict = True  # as open_clip_train.main creates it
    args = parse_args(["--siglip", "--model", f"local-dir:{workdir / 'oc'}", "--batch-size", str(batch_size),
                       "--precision", "fp32", "--lr", "1e-3", "--beta2", "0.95", "--wd", "0.1", "--warmup", "10",
                       "--log-every-n-steps", "100000", "--epochs", "1"])
    args.device, args.world_size, args.rank, args.local_rank = "cpu", 1, 0, 0
    args.distributed, args.wandb, args.save_logs, args.horovod, args.distill = False, False, False, False, False
    return model, args, open_clip.create_loss(args)


class OurModelForOpenClip(torch.nn.Module):
    """Our SigLIPModule behind the output dict open_clip's loop expects (to compare loops alone)."""

    def __init__(self, module: SigLIPModule) -> None:
        super().__init__()
        self.module = module
        self.logit_scale, self.logit_bias = module.logit_scale, module.logit_bias

    def forward(self, images, texts):
        image_features, text_features = self.module(images, texts)
        return {"image_features": image_features, "text_features": text_features,
                "logit_scale": self.logit_scale.exp(), "logit_bias": self.logit_bias}


def time_open_clip(batches, batch_size: int, workdir: Path, our_model: bool = False) -> list:
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch

    model, args, loss = open_clip_setup(batch_size, workdir)
    if our_model:
        model = OurModelForOpenClip(make_module()).train()
    # open_clip main's parameter groups: no decay on gains, biases, logit scale and bias.
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": args.wd}],
        lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)
    scheduler = cosine_lr(optimizer, args.lr, args.warmup, 10_000)
    loader = _Loader(batches)
    train_one_epoch(model, {"train": loader}, loss, 0, optimizer, None, scheduler, None, args)
    return loader.stamped.step_times()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (all three alike)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    batches = make_batches(args.steps + WARMUP, args.batch_size)
    try:
        import open_clip_train  # noqa: F401
        have_open_clip = True
    except ImportError:
        have_open_clip = False
        print("open_clip_train is not importable: the open_clip loop is skipped")
    times = {"lightning": [], "plain": [], "open_clip": [], "oc_loop": []}
    with tempfile.TemporaryDirectory() as tmp:
        runners = {"plain": lambda: time_plain(batches), "lightning": lambda: time_lightning(batches)}
        if have_open_clip:
            runners["open_clip"] = lambda: time_open_clip(batches, args.batch_size, Path(tmp))
            runners["oc_loop"] = lambda: time_open_clip(batches, args.batch_size, Path(tmp), our_model=True)
        names = list(runners)
        for repeat in range(args.repeats):
            # Rotate the order each repeat, so no method always runs first (cold caches) or last.
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                times[name].append(runners[name]())
    # Median over every timed step of every repeat: robust to load spikes from other processes.
    median = {k: statistics.median([t for run in v for t in run]) for k, v in times.items() if v}
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch_size}, "
          f"{args.steps} timed steps x {args.repeats} repeats (median step time)")
    print(f"{'loop':<10} {'ms/step':>9} {'samples/s':>10}   per-repeat medians (ms/step)")
    for name, value in median.items():
        print(f"{name:<10} {value * 1e3:9.2f} {args.batch_size / value:10.1f}   "
              + " ".join(f"{statistics.median(run) * 1e3:.2f}" for run in times[name]))
    print(f"lightning / plain step time: {median['lightning'] / median['plain']:.3f}  (target <= 1.03)")
    if "open_clip" in median:
        print(f"lightning / open_clip throughput: {median['open_clip'] / median['lightning']:.3f}  (target >= 1.0)")
        print(f"lightning / oc_loop throughput (same model, open_clip's loop): "
              f"{median['oc_loop'] / median['lightning']:.3f}")


if __name__ == "__main__":
    main()
