"""The B/16 recipe's training step on one GPU, next to open_clip's ViT-B-16-SigLIP step in the same run.

    python benchmarks/gpu_step.py                        # on a GPU: the grid below, a few minutes
    python benchmarks/gpu_step.py --batches 256 1024 --variant-batch 512 --peak-tflops 989
    python benchmarks/gpu_step.py --smoke                # CPU, tiny towers, seconds (run by the test suite)

Ours: the model of ``configs/siglip_b16.yaml`` (its towers and loss), open_clip: ``create_model(
'ViT-B-16-SigLIP', pretrained=None)`` with its text context set to the recipe's 16 tokens (same work per
sample) and its ``SigLipLoss``. Each step: bf16 autocast forward and loss, backward, fused AdamW, as
``fit`` runs it (without Lightning's bookkeeping). Arms: every batch in ``--batches`` eagerly; at
``--variant-batch``: ``torch.compile``, each SDPA backend (flash, efficient, cudnn, math) and activation
checkpointing; checkpointing again at the largest batch. Per arm: samples/s (median step), achieved
TFLOP/s and MFU from the model's FLOPs per step (``FlopCounterMode`` on the eager step without
checkpointing, CPU attention counted as CUDA's: ``siglip_lightning/plan/flops.py``) against the
device's dense bf16 peak (``siglip_lightning/plan/devices.py``, or ``--peak-tflops``), peak memory
(``max_memory_allocated`` over the timed steps; on the CPU the peak RSS above the resting RSS), and
ours / open_clip samples/s. Then the loss alone, forward + backward, at n = 16k, 32k, 64k pairs of
768-wide features: our dense and tiled sigmoid loss and open_clip's. An arm that does not fit or has
no kernel prints its reason instead of numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
SMOKE_OURS = {  # tiny towers of the recipe's kinds
    "image_tower": {"class_path": "siglip_lightning.VisionTower",
                    "init_args": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "heads": 4}},
    "text_tower": {"class_path": "siglip_lightning.TextTower",
                   "init_args": {"vocab_size": 512, "context_length": 16, "width": 64, "layers": 2, "heads": 4,
                                 "output_dim": 64}},
}
SMOKE_OPEN_CLIP = {"embed_dim": 64,
                   "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16,
                                  "attentional_pool": False, "pool_type": "avg", "no_ln_pre": True},
                   "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 64, "heads": 4, "layers": 2,
                                "no_causal_mask": True, "proj_bias": True, "pool_type": "last"}}


# --- the two models -------------------------------------------------------------------------------

def build_ours(smoke: bool, device: torch.device):
    """(module, image size, context length, vocab) from configs/siglip_b16.yaml (tiny towers for --smoke)."""
    import yaml

    from siglip_lightning.commands.plan import build_module

    model = yaml.safe_load((REPO / "configs/siglip_b16.yaml").read_text())["model"]
    if smoke:
        model.update(SMOKE_OURS)
    module = build_module(model).to(device)
    image, text = model["image_tower"]["init_args"], model["text_tower"]["init_args"]
    return module, image["image_size"], text["context_length"], text["vocab_size"]


def build_open_clip(smoke: bool, device: torch.device, context_length: int):
    import open_clip
    from open_clip.loss import SigLipLoss

    config = open_clip.get_model_config("ViT-B-16-SigLIP")
    overrides = (dict(SMOKE_OPEN_CLIP, init_logit_bias=-10.0) if smoke
                 else {"text_cfg": dict(config["text_cfg"], context_length=context_length)})
    model = open_clip.create_model("ViT-B-16-SigLIP", pretrained=None, **overrides).to(device)
    return model, SigLipLoss()


def set_checkpointing(impl: str, model, on: bool) -> None:
    if impl == "ours":
        model.image_tower.transformer.grad_checkpointing = on
        model.text_tower.transformer.grad_checkpointing = on
    else:
        model.set_grad_checkpointing(on)


@contextlib.contextmanager
def compiled(impl: str, model, backend: Optional[str]):
    """The model to step, its towers compiled when ``backend`` is given (as ``model.compile: true`` does
    for ours; open_clip's whole model), and uncompiled again afterwards."""
    if backend is None:
        yield model
    elif impl == "ours":
        towers = model.image_tower, model.text_tower
        model.image_tower, model.text_tower = (torch.compile(t, backend=backend) for t in towers)
        try:
            yield model
        finally:
            model.image_tower, model.text_tower = towers
    else:
        yield torch.compile(model, backend=backend)


def step_function(impl: str, model, loss_fn, images, text, optimizer, device) -> Callable[[], None]:
    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if impl == "ours":
                loss = model.compute_loss({"image": images, "text": text})
            else:
                image_features, text_features, scale, bias = model(images, text)
                loss = loss_fn(image_features, text_features, scale, bias)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


# --- measuring --------------------------------------------------------------------------------------

class Meter:
    """Synchronisation and peak memory on the device in use."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.rest = self._rss("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return (self._rss("VmHWM") - self.rest) / 2**30

    @staticmethod
    def _rss(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{field} not in /proc/self/status")


def median_seconds(step: Callable[[], None], meter: Meter, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    meter.sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        meter.sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(step: Callable[[], None]) -> int:
    from siglip_lightning.plan.flops import flop_counter

    with flop_counter() as counter:
        step()
    return counter.get_total_flops()


def sdpa_context(backend: str):
    if backend == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel(names[backend])


def _failure(err: BaseException) -> str:
    if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower():
        return "does not fit"
    return f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"


# --- the grid -----------------------------------------------------------------------------------------

def arms(batches: List[int], variant: int, backends: List[str], compile_arm: bool) -> List[Dict]:
    out = [dict(batch=b, compile=False, sdpa="default", ckpt=False) for b in batches]
    if compile_arm:
        out.append(dict(batch=variant, compile=True, sdpa="default", ckpt=False))
    out += [dict(batch=variant, compile=False, sdpa=name, ckpt=False) for name in backends]
    out += [dict(batch=b, compile=False, sdpa="default", ckpt=True) for b in sorted({variant, max(batches)})]
    return out


def run_impl(impl: str, options, device: torch.device, meter: Meter, peak_tflops: float) -> Dict[tuple, Dict]:
    """Every arm for one implementation; results keyed by (batch, compile, sdpa, ckpt)."""
    torch.manual_seed(0)
    ours, size, context, vocab = build_ours(options.smoke, device)
    if impl == "ours":
        model, loss_fn = ours, None
    else:
        del ours
        model, loss_fn = build_open_clip(options.smoke, device, context)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type in ("cuda", "cpu"))
    results, flops = {}, {}
    for arm in arms(options.batches, options.variant_batch, options.sdpa_backends, not options.no_compile):
        key = (arm["batch"], arm["compile"], arm["sdpa"], arm["ckpt"])
        images = torch.randn(arm["batch"], 3, size, size, device=device)
        text = torch.randint(0, vocab, (arm["batch"], context), device=device)
        try:
            if arm["batch"] not in flops:  # model FLOPs: eager, no recomputation
                set_checkpointing(impl, model, False)
                flops[arm["batch"]] = count_flops(step_function(impl, model, loss_fn, images, text, optimizer, device))
            set_checkpointing(impl, model, arm["ckpt"])
            with compiled(impl, model, options.compile_backend if arm["compile"] else None) as runner, \
                    sdpa_context(arm["sdpa"]):
                step = step_function(impl, runner, loss_fn, images, text, optimizer, device)
                step()  # warm (and compile) before the peak is reset
                meter.reset_peak()
                seconds = median_seconds(step, meter, options.warmup, options.repeats)
                peak = meter.peak_gib()
            tflops = flops[arm["batch"]] / seconds / 1e12
            results[key] = dict(samples_per_s=arm["batch"] / seconds, tflops=tflops, mfu=tflops / peak_tflops,
                                peak_gib=peak, gflop_per_sample=flops[arm["batch"]] / arm["batch"] / 1e9)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            results[key] = {"failed": _failure(err)}
        finally:
            set_checkpointing(impl, model, False)
            del images, text
        print(f"{impl} {key}: {results[key]}", file=sys.stderr, flush=True)
    return results


def loss_times(options, device: torch.device, meter: Meter) -> List[Dict]:
    """Forward + backward of the loss alone on n pairs of width-768 features (64 for --smoke)."""
    from open_clip.loss import SigLipLoss

    from siglip_lightning.losses import SigmoidLoss

    width = 64 if options.smoke else 768
    impls = {"ours dense": SigmoidLoss(), f"ours tiled {options.tile}": SigmoidLoss(tile=options.tile),
             "open_clip": SigLipLoss()}
    rows = []
    for n in options.loss_n:
        for name, loss_fn in impls.items():
            row = {"impl": name, "n": n}
            try:
                x = torch.nn.functional.normalize(torch.randn(n, width, device=device), dim=-1).requires_grad_()
                y = torch.nn.functional.normalize(torch.randn(n, width, device=device), dim=-1).requires_grad_()
                scale = torch.tensor(10.0, device=device, requires_grad=True)
                bias = torch.tensor(-10.0, device=device, requires_grad=True)

                def step() -> None:
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        value = loss_fn(x, y, scale, bias)
                    value.backward()
                    x.grad = y.grad = scale.grad = bias.grad = None

                step()
                meter.reset_peak()
                row["ms"] = 1000 * median_seconds(step, meter, 1, options.repeats)
                row["peak_gib"] = meter.peak_gib()
            except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
                row["failed"] = _failure(err)
            finally:
                x = y = None
            rows.append(row)
            print(f"loss {row}", file=sys.stderr, flush=True)
    return rows


def _cell(value: Optional[float], digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def print_tables(results: Dict[str, Dict[tuple, Dict]], losses: List[Dict], device_name: str, peak: float) -> None:
    print(f"## training step, {device_name}, bf16 autocast, dense bf16 peak {peak:g} TFLOP/s\n")
    print("| impl | batch | compile | SDPA | act. ckpt | samples/s | TFLOP/s | MFU | peak MiB | GFLOP/sample "
          "| ours / open_clip |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for impl, table in results.items():
        for key, row in table.items():
            batch, compiled, sdpa, ckpt = key
            head = f"| {impl} | {batch} | {'yes' if compiled else 'no'} | {sdpa} | {'yes' if ckpt else 'no'} |"
            if "failed" in row:
                print(f"{head} {row['failed']} | | | | | |")
                continue
            other = results.get("open_clip", {}).get(key, {})
            ratio = (row["samples_per_s"] / other["samples_per_s"]
                     if impl == "ours" and "samples_per_s" in other else None)
            print(f"{head} {row['samples_per_s']:.1f} | {row['tflops']:.3g} | {row['mfu']:.3f} | "
                  f"{row['peak_gib'] * 1024:.1f} "
                  f"| {row['gflop_per_sample']:.4g} | {_cell(ratio)} |")
    print("\n## the loss alone, forward + backward, bf16 autocast\n")
    print("| impl | n | ms | peak MiB |\n|---|---|---|---|")
    for row in losses:
        if "failed" in row:
            print(f"| {row['impl']} | {row['n']} | {row['failed']} | |")
        else:
            print(f"| {row['impl']} | {row['n']} | {row['ms']:.3f} | {row['peak_gib'] * 1024:.1f} |")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny towers, small batches: checks the script runs")
    parser.add_argument("--batches", type=int, nargs="*", default=None, help="per-device batches (64 .. 1024)")
    parser.add_argument("--variant-batch", type=int, default=None, help="batch of the compile / SDPA / ckpt arms")
    parser.add_argument("--sdpa-backends", nargs="*", default=None, help="flash efficient cudnn math")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile arm")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--loss-n", type=int, nargs="*", default=None, help="pairs for the loss timing")
    parser.add_argument("--tile", type=int, default=4096, help="tile side of the tiled loss")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--impls", nargs="*", default=["ours", "open_clip"], choices=["ours", "open_clip"])
    options = parser.parse_args(argv)
    if options.smoke:
        device = torch.device("cpu")
        defaults = dict(batches=[8, 16], variant_batch=16, sdpa_backends=["math", "flash"], loss_n=[256, 512],
                        peak_tflops=0.1)  # a nominal CPU peak: MFU is only a number here
        options.compile_backend = "eager" if options.compile_backend == "inductor" else options.compile_backend
        options.warmup, options.repeats, options.tile = min(options.warmup, 1), min(options.repeats, 2), 128
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        defaults = dict(batches=[64, 128, 256, 512, 1024], variant_batch=256,
                        sdpa_backends=["flash", "efficient", "cudnn", "math"], loss_n=[16384, 32768, 65536],
                        peak_tflops=None)
    else:
        parser.error("no CUDA device: run on a GPU, or --smoke on a CPU")
    for key, value in defaults.items():
        if getattr(options, key) is None:
            setattr(options, key, value)
    name = "CPU (smoke)" if device.type == "cpu" else torch.cuda.get_device_name(device)
    if options.peak_tflops is None:
        from siglip_lightning.plan.devices import recognise

        known = recognise(name, torch.cuda.get_device_properties(device).total_memory)
        if known is None:
            parser.error(f"unknown device {name!r}: give --peak-tflops (its dense bf16 peak)")
        options.peak_tflops = known.peak_tflops
    meter = Meter(device)
    results = {impl: run_impl(impl, options, device, meter, options.peak_tflops) for impl in options.impls}
    print_tables(results, loss_times(options, device, meter), name, options.peak_tflops)


if __name__ == "__main__":
    main()
