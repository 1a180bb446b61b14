"""FSDP2 sharding of the towers, applied by ``SigLIPModule.configure_model`` under
Lightning's ``ModelParallelStrategy`` (``configs/strategies/fsdp.yaml``).

Each open_clip transformer block of either tower becomes its own ``fully_shard`` unit (only one
block's full weights live at a time), then the root shards what is left (embeddings, heads, t', b).
Unlike Lightning's ``FSDPStrategy`` (FSDP1), which requires CUDA, this path also runs on CPUs over
gloo, so it is tested on machines without GPUs.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def shard_towers(module: nn.Module, mesh) -> None:
    """Apply FSDP2 ``fully_shard`` to every transformer block of ``module``, then to ``module``."""
    from open_clip.transformer import ResidualAttentionBlock
    from torch.distributed.fsdp import fully_shard

    # Lightning's mesh is (data_parallel = nodes, tensor_parallel = devices per node) by default; we
    # use no tensor parallelism, and fully_shard on that 2-D mesh is HSDP: shard within a node,
    # replicate across nodes (all-gathers stay on the fast intra-node links).
    teacher = getattr(module, "teacher", None)  # SigLIP 2's EMA teacher: sharded like the student's blocks
    teacher_blocks = {id(m) for m in teacher.modules()} if teacher is not None else set()
    for block in module.modules():
        if isinstance(block, ResidualAttentionBlock) and (any(p.requires_grad for p in block.parameters())
                                                          or id(block) in teacher_blocks):
            fully_shard(block, mesh=mesh)
    # FSDP2 cannot shard 0-d parameters (t', b): keep them replicated and average their gradients.
    scalars = {p for p in module.parameters() if p.ndim == 0}
    fully_shard(module, mesh=mesh, ignored_params=scalars)
    if len(getattr(module, "objectives", ())):  # the objectives' step reads the root's parameters outside forward
        from torch.distributed.fsdp import register_fsdp_forward_method

        register_fsdp_forward_method(module, "forward_objectives")
    for param in scalars:
        if param.requires_grad:
            param.register_hook(_average_over_ranks)


def _average_over_ranks(grad: torch.Tensor) -> torch.Tensor:
    grad = grad.clone()
    dist.all_reduce(grad)
    return grad / dist.get_world_size()
