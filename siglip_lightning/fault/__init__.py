"""Fault tolerance: atomic resumable checkpoints, RNG state in checkpoints, non-finite step
skipping, a stall watchdog, and config checks. See docs/RESUMING.md."""
from siglip_lightning.fault.atomic import AtomicCheckpointIO, atomic_save, install_atomic_io, remove_partials
from siglip_lightning.fault.checkpoint import ResumableCheckpoint
from siglip_lightning.fault.nonfinite import NonFiniteError, NonFiniteGuard
from siglip_lightning.fault.rng import RNGStateCallback, collect_rng_states, restore_rng_states
from siglip_lightning.fault.watchdog import StallWatchdog

__all__ = [
    "AtomicCheckpointIO",
    "NonFiniteError",
    "NonFiniteGuard",
    "RNGStateCallback",
    "ResumableCheckpoint",
    "StallWatchdog",
    "atomic_save",
    "collect_rng_states",
    "install_atomic_io",
    "remove_partials",
    "restore_rng_states",
]
