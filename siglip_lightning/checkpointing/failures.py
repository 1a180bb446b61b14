"""Turn the errors a distributed run dies of into one line that says what happened."""
from __future__ import annotations

import re
import signal
import sys
from typing import Optional

import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from siglip_lightning import _compat

# What gloo / NCCL / the TCP store say when a peer process is gone or did not answer in time.
_PEER_FAILURE = re.compile(
    r"timed out|timeout|connection closed by peer|connection reset|broken pipe|"
    r"socket|NCCL (error|communicator was aborted)|ProcessGroup\w* .*(abort|error)",
    re.IGNORECASE,
)


def describe_distributed_failure(err: BaseException) -> Optional[str]:
    """A user-facing explanation if ``err`` looks like a peer rank that died or hung, else ``None``."""
    dist_error = getattr(dist, "DistError", ())
    if not (isinstance(err, dist_error) or (isinstance(err, RuntimeError) and _PEER_FAILURE.search(str(err)))):
        return None
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ("distributed training failed: another rank died, did not start or stopped responding, so a collective "
            "operation failed or waited past the process-group timeout (trainer.strategy.init_args.timeout). "
            f"Check the other ranks' logs for the first error. Cause: {first_line}")


_reported = False


def report_distributed_failure(err: BaseException, rank: int = 0) -> bool:
    """Print the explanation of ``err`` once per process; returns whether it was a distributed failure."""
    global _reported
    message = describe_distributed_failure(err)
    if message is None:
        return False
    if not _reported:
        _reported = True
        prefix = f"[rank {rank}] " if rank else ""
        print(f"siglip-lightning: error: {prefix}{message}", file=sys.stderr, flush=True)
    return True


class StopPeersOnFailure(Callback):
    """When a collective fails on global rank 0, say why and kill the ranks it launched.

    Lightning's launcher kills the other processes when a child exits with an error, but not when
    rank 0 fails: a child stuck outside any collective (a hung data read) would then outlive the
    run. The message is printed here, before the kill, because the launcher's watchdog may end
    rank 0 itself as soon as it notices a killed child.
    """

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not report_distributed_failure(exception, trainer.global_rank):
            return
        launcher = getattr(trainer.strategy, "launcher", None)
        if trainer.global_rank == 0 and _compat.is_subprocess_launcher(launcher):
            launcher.kill(signal.SIGKILL)
