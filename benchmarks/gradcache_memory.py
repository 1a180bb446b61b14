"""Peak memory and time of one training step at batch B: the whole batch at once, gradient caching
(``model.micro_batch_size``) and open_clip's ``--accum-freq`` method, on the same model and inputs.

Each (method, micro-batch size) runs in a fresh subprocess: a warm-up step, timed steps, then one
step whose peak resident set size (``VmHWM`` reset before it, minus the RSS just before it) is
measured with every large block allocated by mmap, so that freed memory leaves the RSS. The accum-freq method is
re-implemented here from open_clip's description (``train_one_epoch`` with ``accum_freq > 1``):
embed every micro-batch without grad, then for each micro-batch re-embed it with grad, splice it
into the cached features and backpropagate the loss of the whole batch (k losses per step); unlike
open_clip_train 3.3, t' and b get their gradient once, not once per micro-batch.
Every method's gradients are checked against the whole-batch step.

    python benchmarks/gradcache_memory.py                # B = 256, micro-batches 256, 64, 16
    python benchmarks/gradcache_memory.py --batch 128 --threads 2
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def build(seed: int = 0):
    import torch

    from siglip_lightning import SigLIPModule, TextTower, VisionTower

    torch.manual_seed(seed)
    image = VisionTower(image_size=64, patch_size=8, width=128, layers=3, heads=4)
    text = TextTower(vocab_size=1000, context_length=16, width=128, layers=3, heads=4, output_dim=128)
    return SigLIPModule(image, text)


def accum_freq_step(module, images, text, micro):
    """open_clip's --accum-freq: k no-grad passes, then per micro-batch one grad pass and one full loss."""
    import torch

    pieces = list(zip(torch.split(images, micro), torch.split(text, micro)))
    with torch.no_grad():
        cached = [module(i, t) for i, t in pieces]
    for j, (i, t) in enumerate(pieces):
        image_j, text_j = module(i, t)
        image_all = torch.cat([c[0] for c in cached[:j]] + [image_j] + [c[0] for c in cached[j + 1:]])
        text_all = torch.cat([c[1] for c in cached[:j]] + [text_j] + [c[1] for c in cached[j + 1:]])
        # t' and b must get their gradient once, not k times: only the last pass lets it through
        scale = module.logit_scale if j == len(pieces) - 1 else module.logit_scale.detach()
        bias = module.logit_bias if j == len(pieces) - 1 else module.logit_bias.detach()
        module.loss(image_all, text_all, scale.exp(), bias).backward()


def one_step(method: str, batch: int, micro: int, threads: int, repeats: int) -> dict:
    """Runs in the child: a warm-up step, ``repeats`` timed steps, one step for the memory peak."""
    import torch

    from siglip_lightning.model.gradcache import cached_gradient_loss

    torch.set_num_threads(threads)
    module = build()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, 64, 64, generator=generator)
    text = torch.randint(0, 1000, (batch, 16), generator=generator)

    def step():
        module.zero_grad(set_to_none=True)
        if method == "whole":
            module.compute_loss({"image": images, "text": text}).backward()
        elif method == "gradcache":
            cached_gradient_loss(module, images, text, micro)[1].backward()
        else:
            accum_freq_step(module, images, text, micro)

    step()  # warm-up: one-time allocations (thread pools, kernel caches) are not the step's memory
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = (time.perf_counter() - start) / repeats
    # Then one more step for memory, with every large block taken from (and given back to) mmap, so
    # that freed memory leaves the RSS and the step's peak is its own (slower, hence not timed).
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    module.zero_grad(set_to_none=True)
    libc.malloc_trim(0)
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    step()
    peak = _rss_kib("VmHWM") - before
    grads = {n: p.grad for n, p in module.named_parameters()}
    torch.save(grads, os.environ["GRADS_OUT"])
    return {"method": method, "micro": micro, "peak_mib": peak / 1024, "seconds": seconds}


def run_child(method, batch, micro, threads, repeats, grads_path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), GRADS_OUT=str(grads_path))
    code = (f"import json, benchmarks.gradcache_memory as b; "
            f"print(json.dumps(b.one_step({method!r}, {batch}, {micro}, {threads}, {repeats})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="timed steps after a warm-up step")
    args = parser.parse_args()
    import tempfile

    import torch

    b = args.batch
    plan = [("whole", b)] + [(m, b // d) for d in (4, 16) for m in ("gradcache", "accum_freq")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method, micro in plan:
            path = Path(tmp) / f"{method}-{micro}.pt"
            row = run_child(method, b, micro, args.threads, args.repeats, path)
            grads = torch.load(path)
            if method == "whole":
                reference = grads
            row["grad_err"] = max(float((grads[n] - reference[n]).norm() / reference[n].norm().clamp_min(1e-20))
                                  for n in reference)
            rows.append(row)
            print(json.dumps(row), flush=True)
    whole = rows[0]
    print(f"\nbatch {b}, {args.threads} thread(s); peak = RSS rise during a step; time = mean of "
          f"{args.repeats} step(s) after a warm-up; grad_err = max over tensors of |g - g_whole| / |g_whole|")
    print(f"{'method':<12}{'micro':>6}{'peak MiB':>10}{'x whole':>9}{'step s':>9}{'x whole':>9}{'grad_err':>10}")
    for r in rows:
        print(f"{r['method']:<12}{r['micro']:>6}{r['peak_mib']:>10.0f}{r['peak_mib'] / whole['peak_mib']:>9.2f}"
              f"{r['seconds']:>9.2f}{r['seconds'] / whole['seconds']:>9.2f}{r['grad_err']:>10.1e}")
    by = {(r["method"], r["micro"]): r for r in rows}
    for d in (4, 16):
        g, a = by[("gradcache", b // d)], by[("accum_freq", b // d)]
        print(f"micro {b // d}: gradcache / accum-freq time {g['seconds'] / a['seconds']:.2f}, "
              f"peak memory {g['peak_mib'] / a['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
