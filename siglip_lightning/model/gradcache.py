"""Gradient caching: one contrastive step over a batch larger than fits in memory.

Why: summing the losses of micro-batches (``trainer.accumulate_grad_batches``) is not the loss of
their union, since each micro-batch would see only its own negatives. But the loss depends on the
parameters only through the embeddings (and t', b), so the chain rule splits the step in three
(GradCache, Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup"; open_clip's ``--accum-freq`` is a costlier variant that recomputes the loss per micro-batch):

1. embed every micro-batch without autograd;
2. compute the loss ONCE on all the embeddings (``module.loss``, whatever it is, distributed ones
   included) and differentiate it w.r.t. the embeddings, t' and b only;
3. re-embed each micro-batch with autograd and backpropagate its cached embedding gradient.

The result is the full batch's gradient (up to float rounding) with the activation memory of one
micro-batch, for the cost of one extra forward pass.

How it meets Lightning: automatic optimization is kept. The earlier micro-batches are
backpropagated here, inside ``training_step``; the last one is returned as a surrogate whose value
is the loss and whose gradient completes the step, and Lightning backpropagates it as usual. So
the precision plugin (loss scaling), the DDP all-reduce (once, in that last backward, which touches
every parameter: the reducer is not armed while ``training_step`` runs), the non-finite guard,
gradient clipping, the optimizer and its scheduler all work unchanged. Manual optimization would
refuse ``trainer.gradient_clip_val`` and leave clipping, scaler unscaling and the scheduler to us.

Random ops in the towers (dropout) replay the same masks in passes 1 and 3: the RNG state is saved
before each micro-batch's first pass and restored for its second.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from siglip_lightning import _compat
from siglip_lightning.ranks import collective_device, world_size
from siglip_lightning.errors import UserInputError


def check_micro_batch_size(micro_batch_size: Optional[int]) -> None:
    """Refuse a micro-batch size that is not a positive whole number (``None`` turns caching off)."""
    if micro_batch_size is None:
        return
    if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int) or micro_batch_size < 1:
        raise UserInputError(f"model.micro_batch_size must be a positive whole number of pairs (or null to turn "
                             f"gradient caching off), got {micro_batch_size!r}")


def _fsdp_root(module: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - older torch
        return False
    return isinstance(module, FSDPModule)


def wants_micro_batches(module: nn.Module, rows: int, micro_batch_size: Optional[int]) -> bool:
    """Whether this step goes through gradient caching: when the batch is larger than a micro-batch,
    and always under FSDP (a rank with a short last batch must still run the others' forwards)."""
    return bool(micro_batch_size) and (rows > micro_batch_size or _fsdp_root(module))


def count_micro_batches(rows: int, micro_batch_size: int, sharded: bool, device: torch.device) -> int:
    """How many micro-batches this step takes. Under FSDP every forward all-gathers weights, so all
    ranks must run the same number: they agree on the largest; a rank with a short batch splits it
    finer, or (fewer rows than micro-batches) pads with forwards whose gradient is zero."""
    count = math.ceil(rows / micro_batch_size)
    if sharded and world_size() > 1:
        agreed = torch.tensor([count], device=collective_device())
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        count = int(agreed.item())
    return count


class _RngReplay:
    """Saves the RNG state before each micro-batch's no-grad pass and replays it for the grad pass."""

    def __init__(self, device: torch.device) -> None:
        self.devices = [device] if device.type == "cuda" else []
        self.states: List[Tuple[torch.Tensor, List[torch.Tensor]]] = []

    def save(self) -> None:
        self.states.append((torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self.devices]))

    @contextlib.contextmanager
    def replay(self, index: int) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            cpu, accelerators = self.states[index]
            torch.set_rng_state(cpu)
            for device, state in zip(self.devices, accelerators):
                torch.cuda.set_rng_state(state, device)
            yield


def _grad_scaler(module: nn.Module) -> Any:
    """The fp16 GradScaler of the run, if any: the backward passes run here must scale as Lightning's does."""
    trainer = _compat.attached_trainer(module)
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None) if trainer is not None else None


def _scalar_leaf(param: Optional[nn.Parameter]) -> Optional[torch.Tensor]:
    if param is None:
        return None
    return param.detach().requires_grad_(param.requires_grad)


def cached_gradient_loss(module: nn.Module, images: torch.Tensor, text: torch.Tensor,
                         micro_batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """One gradient-cached step of ``module`` (a ``SigLIPModule``) on a batch of pairs.

    Backpropagates every micro-batch but the last, and returns ``(loss, surrogate)``: ``loss`` is
    the detached loss of the whole batch; ``surrogate`` has the same value, and calling
    ``surrogate.backward()`` completes the gradients of the full-batch loss (towers, t', b).
    """
    rows = images.shape[0]
    sharded = _fsdp_root(module)
    count = count_micro_batches(rows, micro_batch_size, sharded, images.device)
    real = min(count, rows)
    pieces = list(zip(torch.tensor_split(images, real), torch.tensor_split(text, real)))
    pieces += [(images[:1], text[:1])] * (count - real)  # FSDP padding (see count_micro_batches)
    rng = _RngReplay(images.device)

    # 1. every micro-batch's embeddings, without activations (through module(...) so FSDP's hooks run)
    with torch.no_grad():
        embedded = []
        for image_part, text_part in pieces:
            rng.save()
            embedded.append(module(image_part, text_part))

    # 2. the loss of the whole batch, differentiated w.r.t. the embeddings, t' and b only
    image_features = torch.cat([e[0] for e in embedded[:real]]).requires_grad_()
    text_features = torch.cat([e[1] for e in embedded[:real]]).requires_grad_()
    del embedded
    scale, bias = _scalar_leaf(module.logit_scale), _scalar_leaf(module.logit_bias)
    with torch.enable_grad():
        loss = module.loss(image_features, text_features, scale.exp(), bias)
        wrt = [image_features, text_features] + [s for s in (scale, bias) if s is not None and s.requires_grad]
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    # kept in at least float32: with fp16/bf16 towers the cached gradients are not rounded twice
    wide = lambda t: torch.promote_types(t.dtype, torch.float32)  # noqa: E731
    grads = [torch.zeros_like(w, dtype=wide(w)) if g is None else g.to(wide(g)) for w, g in zip(wrt, grads)]
    image_grads, text_grads = (list(torch.split(g, [p[0].shape[0] for p in pieces[:real]]))
                               + [g.new_zeros((1, *g.shape[1:]))] * (count - real) for g in grads[:2])
    del image_features, text_features, wrt  # only their gradients are needed from here on
    scalar_grads = iter(grads[2:])
    scalar_terms = [(param, next(scalar_grads)) for param in (module.logit_scale, module.logit_bias)
                    if param is not None and param.requires_grad]

    # 3. each micro-batch again, with autograd, backpropagated with its cached embedding gradients
    scaler = _grad_scaler(module)
    if sharded:
        module.set_requires_gradient_sync(False)  # FSDP2: reduce-scatter once, in the last backward
    try:
        for index, (image_part, text_part) in enumerate(pieces):
            with rng.replay(index):
                image_out, text_out = module(image_part, text_part)
            terms = [(out.to(grad.dtype) * grad).sum() for out, grad in
                     ((image_out, image_grads[index]), (text_out, text_grads[index])) if out.requires_grad]
            if index < len(pieces) - 1:
                if terms:
                    part = torch.stack(terms).sum()
                    (scaler.scale(part) if scaler is not None else part).backward()
                continue
            # the last micro-batch and t', b: left for Lightning's own backward
            terms += [(param * grad).sum() for param, grad in scalar_terms]
    finally:
        if sharded:
            module.set_requires_gradient_sync(True)
    loss = loss.detach()
    if not terms:
        return loss, loss
    attached = torch.stack(terms).sum()
    return loss, loss.to(attached.dtype) + (attached - attached.detach())
