"""One SigLiT run: a text tower trained from scratch against locked, cached image embeddings.

Protocol (documented in docs/RESULTS.md):
- a fixed number of *examples seen* per run, so a batch of size B gets ``examples // B`` steps;
- AdamW, beta2 = 0.95 (paper), weight decay 0.1 on matrices, linear warmup (5% of the steps) then
  cosine to 0;
- the learning rate follows the square-root rule ``lr = lr_base * sqrt(B / lr_ref_batch)``: Adam's
  update noise scales like 1/sqrt(B), so sqrt scaling keeps it comparable across batch sizes
  (Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient algorithms");
- the sigmoid loss's bias b starts at ``-log(B)`` ("neglog", so that sigma(b) = 1/B, the share of
  positives in a batch; at the paper's B = 32k this is -10.4, i.e. the paper's -10) or at the
  paper's -10 ("paper"); t' = log 10 for sigmoid (paper), log(1/0.07) for softmax (CLIP);
- evaluation on held-out pairs: retrieval R@1 in both directions (a hit when the retrieved item's
  caption equals the query's, since a few held-out captions repeat), and zero-shot top-1 on the
  colour x shape classes with prompt templates (class embeddings averaged and re-normalised).
"""
from __future__ import annotations

import math
import time
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from siglip_lightning.errors import UserInputError
from siglip_lightning.experiments.siglit import SiglitSetup, make_text_tower
from siglip_lightning.losses import SigmoidLoss, SoftmaxLoss
from siglip_lightning.model.module import SigLIPModule
from siglip_lightning.model.optim import warmup_cosine

LOSSES = {"sigmoid": SigmoidLoss, "softmax": SoftmaxLoss}
CORRUPTIONS = ("none", "image", "text", "pairing", "all")


def resolve_bias(init_bias, batch_size: int) -> Optional[float]:
    """``"neglog"`` -> -log(B); ``"paper"`` -> -10; ``None`` -> the loss's default; a number as is."""
    if init_bias == "neglog":
        return -math.log(batch_size)
    if init_bias == "paper":
        return -10.0
    return None if init_bias is None else float(init_bias)


def corrupt_batch(images: torch.Tensor, texts: torch.Tensor, kind: str, p: float, noise_bank: torch.Tensor,
                  vocab_size: int, eos_id: int, generator: torch.Generator):
    """Paper Fig. 7: each example's image, text or pairing is corrupted with probability ``p``.

    image: the embedding of a uniform-noise image; text: random tokens (random length, then EOS);
    pairing: the selected examples' texts are shuffled among themselves; all: the three at once.
    """
    if kind == "none" or p <= 0:
        return images, texts
    n = images.shape[0]
    if kind in ("image", "all"):
        hit = torch.rand(n, generator=generator) < p
        pick = torch.randint(0, noise_bank.shape[0], (int(hit.sum()),), generator=generator)
        images = images.clone()
        images[hit] = noise_bank[pick]
    if kind in ("text", "all"):
        hit = torch.rand(n, generator=generator) < p
        k = int(hit.sum())
        random_ids = torch.randint(2, vocab_size, (k, texts.shape[1]), generator=generator)
        lengths = torch.randint(3, texts.shape[1], (k, 1), generator=generator)
        random_ids[torch.arange(texts.shape[1]).expand(k, -1) >= lengths] = eos_id
        texts = texts.clone()
        texts[hit] = random_ids
    if kind in ("pairing", "all"):
        hit = (torch.rand(n, generator=generator) < p).nonzero().flatten()
        texts = texts.clone()
        texts[hit] = texts[hit[torch.randperm(hit.numel(), generator=generator)]]
    return images, texts


@torch.no_grad()
def evaluate(module: SigLIPModule, data: Dict[str, object]) -> Dict[str, float]:
    """Held-out retrieval R@1 (image->text, text->image, mean) and zero-shot top-1."""
    module.eval()
    img = F.normalize(data["eval_image"], dim=-1)
    tokens = data["eval_text"]
    txt = torch.cat([module.encode_text(chunk) for chunk in tokens.split(1024)])
    sim = img @ txt.T
    # a caption that occurs twice in the held-out set is a correct answer for both images
    same = (tokens[:, None, :] == tokens[None, :, :]).all(-1)
    rows = torch.arange(sim.shape[0])
    i2t = same[rows, sim.argmax(1)].float().mean().item()
    t2i = same[rows, sim.argmax(0)].float().mean().item()
    prompts = torch.cat([module.encode_text(chunk) for chunk in data["prompt_text"].split(1024)])
    classes = F.normalize(prompts.view(len(data["class_names"]), data["num_templates"], -1).mean(1), dim=-1)
    pred = (F.normalize(data["zeroshot_image"], dim=-1) @ classes.T).argmax(1)
    zs = (pred == data["zeroshot_label"]).float().mean().item()
    module.train()
    return {"r1_i2t": 100 * i2t, "r1_t2i": 100 * t2i, "r1_mean": 50 * (i2t + t2i), "zeroshot_top1": 100 * zs}


def train_text_tower(data: Dict[str, object], loss: str = "sigmoid", batch_size: int = 256, examples: int = 262_144,
                     seed: int = 0, lr_base: float = 1e-3, lr_ref_batch: int = 256, lr_rule: str = "sqrt",
                     warmup_frac: float = 0.05, weight_decay: float = 0.1, init_scale: Optional[float] = None,
                     init_bias="neglog", captions: str = "noisy", corruption: str = "none", corruption_p: float = 0.0,
                     text_width: int = 64, text_layers: int = 1, device: str = "cpu", return_module: bool = False,
                     **_ignored) -> Dict[str, object]:
    """Train one text tower and return its settings, final t, b, loss and held-out metrics.

    Args:
        data: what :func:`siglip_lightning.experiments.siglit.load_siglit_data` returns.
        loss: ``sigmoid`` or ``softmax`` (the package's loss classes).
        batch_size: pairs per step.
        examples: examples seen (steps = examples // batch_size).
        seed: seed of the text tower's init and of the data order.
        lr_base: learning rate at ``lr_ref_batch``.
        lr_ref_batch: the batch size at which ``lr_base`` holds.
        lr_rule: ``sqrt`` (lr ~ sqrt(B)), ``linear`` or ``constant``.
        warmup_frac: share of the steps spent in linear warmup.
        weight_decay: AdamW decay on matrices.
        init_scale: t' at init; ``None`` takes the loss's default.
        init_bias: b at init: ``neglog`` (-log B), ``paper`` (-10), a number, or ``None`` (loss default).
        captions: ``noisy`` (with the setup's caption noise) or ``clean`` training captions.
        corruption: ``none``, ``image``, ``text``, ``pairing`` or ``all`` (paper Fig. 7).
        corruption_p: probability that an example is corrupted.
        text_width: text tower width.
        text_layers: text tower depth.
        device: torch device.
        return_module: also return the trained module (notebooks).
    """
    if loss not in LOSSES:
        raise UserInputError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    if corruption not in CORRUPTIONS:
        raise UserInputError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}")
    steps = examples // batch_size
    if steps < 1:
        raise UserInputError(f"examples ({examples}) must be at least the batch size ({batch_size})")
    train_text = data[f"train_text_{captions}"]
    num_pairs = train_text.shape[0]
    if batch_size > num_pairs:
        raise UserInputError(f"batch_size {batch_size} exceeds the {num_pairs} training pairs")
    factor = {"sqrt": math.sqrt(batch_size / lr_ref_batch), "linear": batch_size / lr_ref_batch, "constant": 1.0}
    if lr_rule not in factor:
        raise UserInputError(f"lr_rule must be sqrt, linear or constant, got {lr_rule!r}")
    lr = lr_base * factor[lr_rule]
    bias = resolve_bias(init_bias, batch_size) if loss == "sigmoid" else None
    torch.manual_seed(seed)
    setup = SiglitSetup(**data["setup"])
    text = make_text_tower(setup, data["vocab_size"], width=text_width, layers=text_layers)
    warmup = max(1, int(warmup_frac * steps))
    module = SigLIPModule(nn.Identity(), text, LOSSES[loss](), init_logit_scale=init_scale, init_logit_bias=bias,
                          lr=lr, weight_decay=weight_decay, warmup_steps=warmup, total_steps=steps).to(device)
    optimizer = torch.optim.AdamW(module.parameter_groups(), betas=(0.9, 0.95), fused=module.use_fused_optimizer())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, steps, 0.0))
    generator = torch.Generator().manual_seed(10_000 + seed)
    images_all = data["train_image"]
    order, cursor = torch.randperm(num_pairs, generator=generator), 0
    start, last = time.perf_counter(), float("nan")
    for _ in range(steps):
        if cursor + batch_size > num_pairs:  # a new epoch: reshuffle
            order, cursor = torch.randperm(num_pairs, generator=generator), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        images, texts = corrupt_batch(images_all[idx], train_text[idx], corruption, corruption_p,
                                      data["noise_image"], data["vocab_size"], 1, generator)
        value = module.compute_loss({"image": images.to(device), "text": texts.to(device)})
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        schedule.step()
        last = value.item()
    if not math.isfinite(last):
        raise RuntimeError(f"training diverged (loss {last}) at batch {batch_size}, lr {lr:g}")
    module = module.cpu()
    result = {"loss": loss, "batch_size": batch_size, "seed": seed, "examples": steps * batch_size, "steps": steps,
              "lr": lr, "init_scale": float(module.loss.init_logit_scale if init_scale is None else init_scale),
              "init_bias": "" if bias is None else round(bias, 4), "captions": captions, "corruption": corruption,
              "corruption_p": corruption_p, "final_loss": round(last, 4),
              "final_t": round(module.logit_scale.exp().item(), 3),
              "final_b": "" if module.logit_bias is None else round(module.logit_bias.item(), 3),
              **{k: round(v, 2) for k, v in evaluate(module, data).items()},
              "seconds": round(time.perf_counter() - start, 1)}
    if return_module:
        result["module"] = module
    return result
