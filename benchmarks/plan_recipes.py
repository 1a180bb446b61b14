"""docs/SCALING.md's "before you rent GPUs" table: every committed recipe planned per device, and the
largest per-device batch on 40 GB, 80 GB and 141 GB parts (``siglip-lightning plan`` for each).

    PYTHONPATH=. python benchmarks/plan_recipes.py            # a markdown table, about a minute

Two recipes take their towers from a checkpoint folder (``siglit.yaml``: a locked Hugging Face image
tower; ``finetune_hf.yaml``: ``--pretrained``). They are planned with towers of the released
siglip-base-patch16-224's shapes in place of the folder (written below), which is what they load.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30

B16_VISION = {"class_path": "siglip_lightning.VisionTower",
              "init_args": {"image_size": 224, "patch_size": 16, "width": 768, "layers": 12, "heads": 12,
                            "norm_eps": 1e-6}}
STAND_INS = {  # recipe -> YAML put after it: the towers its folder would give
    "siglit.yaml": f"""
model:
  image_tower:
    class_path: siglip_lightning.LockedTower
    init_args:
      tower: {B16_VISION}
""",
    "finetune_hf.yaml": f"""
model:
  image_tower: {B16_VISION}
  text_tower:
    class_path: siglip_lightning.TextTower
    init_args: {{vocab_size: 32000, context_length: 64, width: 768, layers: 12, heads: 12, output_dim: 768,
                norm_eps: 1.0e-6}}
  init_logit_scale: 2.3
  init_logit_bias: -10.0
data:
  image_size: 224
  context_length: 64
""",
}
PARTS = ["A100-40GB", "H100", "H200"]  # 40 GB, 80 GB, 141 GB


def recipes() -> List[Path]:
    """Every config with a model section (the eval_* files are callback fragments, not runs)."""
    import yaml

    return [p for p in sorted((REPO / "configs").glob("*.yaml")) if "model" in (yaml.safe_load(p.read_text()) or {})]


def plan_recipe(path: Path, folder: Path) -> Dict:
    from siglip_lightning.commands.plan import parse, plan_parsed
    from siglip_lightning.plan.devices import device_named
    from siglip_lightning.plan.planner import largest_batch, peak_at

    args = ["--config", str(path)]
    if path.name in STAND_INS:
        fragment = folder / f"stand_in_{path.name}"
        fragment.write_text(STAND_INS[path.name])
        args += ["--config", str(fragment)]
    config = parse(args)
    plan, module = plan_parsed(config)
    row = {"recipe": path.name, "strategy": plan.layout.name, "precision": plan.precision, "rows": plan.rows,
           "peak": plan.peak, "flops": plan.flops, "stand_in": path.name in STAND_INS}
    for part in PARTS:
        budget = device_named(part).memory_bytes - config.plan.reserve_gib * GIB
        row[part] = largest_batch(lambda rows: peak_at(plan, module, rows) <= budget)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    print("| recipe | strategy, precision | pairs per device | planned peak per device (GiB) | TFLOP per step "
          "per device | largest batch per device: 40 GB | 80 GB | 141 GB |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for path in recipes():
            row = plan_recipe(path, Path(folder))
            name = row["recipe"] + (" (B/16-shaped towers for its folder)" if row["stand_in"] else "")
            print(f"| {name} | {row['strategy']}, {row['precision']} | {row['rows']} | {row['peak'] / GIB:.2f} | "
                  f"{row['flops'] / 1e12:.3g} | {row['A100-40GB']} | {row['H100']} | {row['H200']} |", flush=True)


if __name__ == "__main__":
    main()
