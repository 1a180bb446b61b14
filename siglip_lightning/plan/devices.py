"""Accelerators people rent, with their dense bf16 peak and memory (the vendors' data sheets; memory as
``nvidia-smi`` reports it). Shared by the planner and ``benchmarks/gpu_step.py``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from siglip_lightning.errors import UserInputError

MIB = 2**20


@dataclass(frozen=True)
class Device:
    name: str
    peak_tflops: float  # dense bf16 matrix math (no sparsity)
    memory_bytes: int


DEVICES = {
    "A100-40GB": Device("A100-40GB", 312.0, 40960 * MIB),
    "A100-80GB": Device("A100-80GB", 312.0, 81920 * MIB),
    "H100-PCIe": Device("H100-PCIe", 756.0, 81559 * MIB),
    "H100": Device("H100", 989.4, 81559 * MIB),  # SXM
    "H200": Device("H200", 989.4, 143771 * MIB),
}


def device_named(name: str) -> Device:
    """A device of the table by its name (case-insensitive)."""
    for key, device in DEVICES.items():
        if key.lower() == name.lower():
            return device
    raise UserInputError(f"unknown device {name!r}; known: {', '.join(DEVICES)} (or give its peak TFLOP/s and "
                         "memory)")


def recognise(cuda_name: str, memory_bytes: int) -> Optional[Device]:
    """The table's entry for a CUDA device name such as ``NVIDIA H100 80GB HBM3``, if there is one."""
    upper = cuda_name.upper()
    if "H200" in upper:
        return DEVICES["H200"]
    if "H100" in upper:
        return DEVICES["H100-PCIe" if "PCIE" in upper else "H100"]
    if "A100" in upper:
        return DEVICES["A100-80GB" if memory_bytes > 48 * 2**30 else "A100-40GB"]
    return None
