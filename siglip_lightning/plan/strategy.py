"""What a device holds under the configured strategy, from the trainer settings of a config.

- one device, DDP: every parameter, its gradient and the AdamW state; DDP adds its gradient buckets
  (a second copy of the gradients, unless ``gradient_as_bucket_view``, which makes the gradients views
  of the buckets).
- FSDP2 (``ModelParallelStrategy``, ``model/sharding.py``): parameters, gradients and optimizer state
  split over the devices of a node (HSDP: replicated across nodes); during forward and backward the
  root's parameters (embeddings, heads) are gathered whole, and two transformer blocks at a time (the
  one running and the one prefetched), plus one block's whole gradient before its reduce-scatter.
- DeepSpeed ZeRO-2: gradients and optimizer state split over all devices, parameters replicated.

Every device also holds its batch and the next one the loader has ready.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

from siglip_lightning.errors import UserInputError


@dataclass(frozen=True)
class Layout:
    name: str
    world: int  # data-parallel devices: the loss's global batch is world x rows
    shard: int  # parameters / gradients / optimizer state are split over this many devices
    kind: str  # "single", "ddp", "fsdp", "zero2"
    bucket_view: bool = False


def _get(value: Any, key: str, default: Any = None) -> Any:
    if value is None:
        return default
    if isinstance(value, dict):
        return value.get(key, default)
    return getattr(value, key, default)


def _count_devices(devices: Any) -> int:
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, int):
        return devices
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        return int(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if devices in (None, "auto", "-1", -1):
        return 1  # the planner cannot see the machine: set trainer.devices to plan several
    raise UserInputError(f"cannot read trainer.devices={devices!r}")


def layout_of(trainer: Dict[str, Any]) -> Layout:
    """The layout a config's ``trainer`` section asks for."""
    devices = _count_devices(_get(trainer, "devices", "auto"))
    nodes = int(_get(trainer, "num_nodes", 1) or 1)
    world = devices * nodes
    strategy = _get(trainer, "strategy", "auto")
    path = _get(strategy, "class_path") if not isinstance(strategy, str) else strategy
    args = _get(strategy, "init_args", {}) if not isinstance(strategy, str) else {}
    name = str(path).rsplit(".", 1)[-1].lower()
    if name in ("auto", "single_device", "singledevicestrategy", "none") and world == 1:
        return Layout("one device", 1, 1, "single")
    if name in ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddpstrategy", "ddp_find_unused_parameters_true",
                "xla", "xlastrategy"):
        return Layout(f"DDP x{world}", world, 1, "ddp", bool(_get(args, "gradient_as_bucket_view", False)))
    if name in ("modelparallelstrategy", "fsdp", "fsdpstrategy"):
        return Layout(f"FSDP2 x{world} (sharded over {devices})", world, devices, "fsdp")
    if name.startswith("deepspeed_stage_2") or name == "deepspeedstrategy":
        return Layout(f"DeepSpeed ZeRO-2 x{world}", world, world, "zero2")
    raise UserInputError(f"the planner does not know trainer.strategy={path!r}; it plans one device, DDP, "
                         "FSDP2 (ModelParallelStrategy) and DeepSpeed stage 2")


def resident_bytes(layout: Layout, params: int, trainable: int, optimizer: int, blocks: list) -> Dict[str, int]:
    """Bytes a device holds for the whole step, by kind (the batch is added by the caller)."""
    shard = layout.shard
    out = {"parameters": params // (shard if layout.kind == "fsdp" else 1), "optimizer state": optimizer // shard}
    if layout.kind == "ddp":
        out["DDP buckets"] = trainable
    if layout.kind == "fsdp" and shard > 1:
        largest = max(blocks, default=0)
        root = params - sum(blocks)
        out["FSDP gathered"] = root + 3 * largest  # root whole, two blocks' weights, one block's gradient
    return out


def gradient_share(layout: Layout) -> float:
    """Fraction of the whole gradients a device keeps (its shard), or 0 when they live in DDP's buckets."""
    if layout.kind == "ddp" and layout.bucket_view:
        return 0.0
    return 1.0 / layout.shard
