"""The loss each recipe in configs/ runs: per-device memory and speed at the recipe's per-device batch.

For every recipe: global batch, devices, per-device batch b and embedding width d (from the YAML),
the loss class it names, and, measured on this CPU with gloo at b x d (fp32, fresh processes, see
loss_harness.py): the per-rank peak memory of forward + backward at W = 2 and W = 4 (the ring keeps
it flat in W; a recipe's real W is devices x nodes), and the step time at W = 2. With ``--before DIR``
(a checkout of an earlier commit) the same ring runs from that code too, for a before / after ratio
in the same run.

    PYTHONPATH=. python benchmarks/recipe_loss.py [--before ../old-checkout] [--repeats 2]
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yaml
from loss_harness import measure

REPO = Path(__file__).resolve().parents[1]
RECIPES = ["siglip_b16", "siglit", "siglit_precomputed", "msiglip", "resolution_adapt"]


def recipe_shape(name: str) -> dict:
    config = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    trainer, model, data = config["trainer"], config["model"], config["data"]
    devices, nodes = int(trainer.get("devices", 1)), int(trainer.get("num_nodes", 1))
    d = model["text_tower"]["init_args"]["output_dim"]
    loss = model.get("loss", {"class_path": "SigmoidLoss"})
    return {"devices": devices * nodes, "b": int(data["batch_size"]), "d": int(d),
            "loss": loss["class_path"].split(".")[-1] + "".join(f" {k}={v}" for k, v in (loss.get("init_args") or {}).items())}


def worst(results, key):
    return max(r[key] for r in results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", help="checkout of the code to compare with (its ChunkedSigmoidLoss, one-way ring)")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes per timing (median)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--recipes", nargs="*", default=RECIPES)
    args = p.parse_args()
    print("| recipe | global batch | devices | per-device b | d | loss | peak MiB W=2 | W=4 | W=4 / W=2 | step s W=2 "
          + ("| before s | after / before " if args.before else "") + "|")
    print("|---" * (10 + (2 if args.before else 0)) + "|")
    for name in args.recipes:
        shape = recipe_shape(name)
        base = dict(impl="sigmoid", b=shape["b"], d=shape["d"], steps=args.steps)
        memory = {w: worst(measure(dict(base, world=w)), "peak_above_mib") for w in (2, 4)}
        after, before = [], []
        for _ in range(args.repeats):  # interleaved, so that load on the machine hits both alike
            after.append(worst(measure(dict(base, world=2)), "step_s"))
            if args.before:
                before.append(worst(measure(dict(base, world=2, impl="chunked-uni", pythonpath=args.before)), "step_s"))
        t_after = statistics.median(after)
        row = (f"| {name} | {shape['b'] * shape['devices']} | {shape['devices']} | {shape['b']} | {shape['d']} | "
               f"{shape['loss']} | {memory[2]:.0f} | {memory[4]:.0f} | {memory[4] / memory[2]:.2f} | {t_after:.3f} ")
        if args.before:
            t_before = statistics.median(before)
            row += f"| {t_before:.3f} | {t_after / t_before:.2f} "
        print(row + "|", flush=True)


if __name__ == "__main__":
    main()
