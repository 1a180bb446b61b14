"""Turn the errors a distributed run dies of into one line that says what happened."""
from __future__ import annotations

import re
from typing import Optional

import torch.distributed as dist

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
    return ("distributed training failed: another rank died or stopped responding, so a collective "
            "operation failed or waited past the process-group timeout (trainer.strategy.init_args.timeout). "
            f"Check the other ranks' logs for the first error. Cause: {first_line}")
