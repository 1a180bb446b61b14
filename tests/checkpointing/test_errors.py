"""The one-line explanations of a failed distributed run."""
from __future__ import annotations

import pytest
import torch.distributed as dist

from siglip_lightning.checkpointing.failures import describe_distributed_failure


@pytest.mark.parametrize("err", [
    RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1234"),
    RuntimeError("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 20000ms for recv"),
    dist.DistBackendError("NCCL communicator was aborted on rank 0"),
])
def test_peer_failures_are_explained(err):
    message = describe_distributed_failure(err)
    assert message is not None and "another rank died, did not start or stopped responding" in message
    assert "trainer.strategy.init_args.timeout" in message and str(err).splitlines()[0] in message


@pytest.mark.parametrize("err", [RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("timeout")])
def test_other_errors_are_left_alone(err):
    assert describe_distributed_failure(err) is None
