"""Checkpointing and fault tolerance: atomic resumable checkpoints, RNG state in checkpoints, non-finite
step skipping, a stall watchdog, and turning a dead peer rank into one clear error. See docs/RESUMING.md."""
from siglip_lightning.checkpointing.atomic import AtomicCheckpointIO, atomic_save, install_atomic_io, remove_partials
from siglip_lightning.checkpointing.checkpoint import ResumableCheckpoint
from siglip_lightning.checkpointing.nonfinite import NonFiniteError, NonFiniteGuard
from siglip_lightning.checkpointing.rng import RNGStateCallback, collect_rng_states, restore_rng_states
from siglip_lightning.checkpointing.watchdog import StallWatchdog

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
