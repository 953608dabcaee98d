"""torch.distributed helpers: the process group torchrun describes, and the gathers the losses use.

API:
    init_distributed(device) -> (rank, world_size, local_rank)   (joins torchrun's group; gloo / nccl)
    join(device) -> (rank, world_size, device)                (the same for a corpus command: its device)
    barrier()                                                 (all ranks wait; no-op in one process)
    gather_objects(obj, world_size) -> list                   (one picklable object per rank)
    on_main(fn) -> result                                     (fn on rank 0, its result or error on all)
    rank() -> int, world_size() -> int, is_main() -> bool, is_distributed() -> bool
    gather_with_grad(t [n_local, ...]) -> [n_global, ...]   (differentiable, ranks may differ in n_local)
    all_gather(t [n_local, ...]) -> [n_global, ...]          (no gradient; ids, sizes, scores)
    gather_sizes(n_local) -> list[int]                        (first-dimension size on every rank)
    global_mean_scale(n_local) -> float                       (see below)
    all_reduce_mean(t) -> Tensor                              (for logging)
    unwrap_model(model) -> nn.Module                          (DDP / FSDP / torch.compile wrappers)

Why gradients flow back to every rank. With cross-device negatives, the loss on rank r depends on the
passages embedded on every rank s. ``gather_with_grad`` is the identity in autograd terms: its backward
sums the gradient of the gathered tensor over all ranks (one all-reduce) and hands each rank its own slice,
so rank s receives d(sum_r loss_r)/d(its embeddings). NeMo Automodel and FlagEmbedding's LLM-Embedder
instead replace only the local slice of a plain all_gather, which drops every other rank's contribution
and biases the gradient.

Why losses are scaled. DDP averages parameter gradients over the k ranks. If every rank returns
``k * sum(local per-query losses) / n_global`` then the mean over ranks of those gradients is exactly the
gradient of the global-batch mean loss, for any split of the batch (equal splits make the factor 1, i.e.
the local mean). ``global_mean_scale(n_local)`` returns ``k / n_global`` for that purpose.

Outside ``torch.distributed`` (or with one process) every helper is the identity and costs nothing.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def init_distributed(device: str) -> tuple[int, int, int]:
    """Join the process group torchrun describes (env vars), gloo on CPU and nccl on GPU; else (0, 1, 0)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    if int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, int(os.environ.get("LOCAL_RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def leave() -> None:
    """Leave the process group, if this process joined one. A process that exits with its group alive can
    abort in the backend's teardown (gloo: "terminate called without an active exception"), failing a
    torchrun job whose work was done."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def join(device: str | None) -> tuple[int, int, str | None]:
    """For a corpus command under torchrun: join the group and return ``(rank, world size, device)``, where
    the device of a multi-process GPU run is this rank's ``cuda:<local rank>`` (else ``device`` as given)."""
    rank_, world, local_rank = init_distributed(device or "auto")
    if world > 1 and device != "cpu" and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
    return rank_, world, device


def barrier() -> None:
    """Every rank waits here (a no-op outside an initialised process group of more than one process)."""
    if is_distributed():
        dist.barrier()


def gather_objects(obj: Any, world_size: int) -> list[Any]:
    """One picklable object from every rank, in rank order (every rank takes part)."""
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Any) -> Any:
    """Run ``fn()`` on rank 0 alone and hand its result, or raise its error, on every rank (so a refusal on
    rank 0 ends every rank alike instead of leaving the others waiting)."""
    result, error = None, None
    if rank() == 0:
        try:
            result = fn()
        except Exception as err:  # handed to every rank below, raised there
            error = err
    if is_distributed():
        box = [(result, error)]
        dist.broadcast_object_list(box, src=0)
        result, error = box[0]
    if error is not None:
        raise error
    return result


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0: the process that writes files and logs."""
    return rank() == 0


def gather_sizes(n_local: int, device: torch.device | str = "cpu") -> list[int]:
    """First-dimension size on every rank, in rank order."""
    if not is_distributed():
        return [int(n_local)]
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    local = torch.tensor([int(n_local)], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def _gather_padded(t: Tensor, sizes: list[int]) -> Tensor:
    """all_gather along dim 0 when ranks hold different sizes: pad to the largest, gather, trim."""
    t = t.contiguous()
    largest = max(sizes)
    if t.shape[0] < largest:
        pad = t.new_zeros((largest - t.shape[0], *t.shape[1:]))
        t = torch.cat([t, pad], dim=0)
    parts = [torch.empty_like(t) for _ in sizes]
    dist.all_gather(parts, t)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)], dim=0)


def all_gather(t: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate ``t`` from all ranks along dim 0 (rank order), without gradient. [n_local, ...] -> [n_global, ...].

    ``sizes``: every rank's first-dimension size when already known (saves one collective).
    """
    if not is_distributed():
        return t
    with torch.no_grad():
        return _gather_padded(t.detach(), sizes or gather_sizes(t.shape[0], t.device))


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, sizes: list[int] | None) -> Tensor:
        sizes = sizes or gather_sizes(t.shape[0], t.device)
        ctx.start = sum(sizes[: rank()])
        ctx.size = t.shape[0]
        return _gather_padded(t, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # Every rank's loss may depend on every slice: sum the gradients of the gathered tensor over ranks,
        # then keep this rank's slice. (all_reduce works on every backend; gloo has no reduce_scatter.)
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.start + ctx.size], None


def gather_with_grad(t: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate ``t`` from all ranks along dim 0, keeping the gradient to every rank's slice.

    Args:
        t: [n_local, ...]; ranks may hold different n_local.
        sizes: every rank's n_local when already known (saves one collective).

    Returns:
        [n_global, ...] in rank order; the identity outside torch.distributed. Every rank must call this
        (and backpropagate through it) the same number of times: it is a collective.
    """
    if not is_distributed():
        return t
    return _GatherWithGrad.apply(t, sizes)


def global_mean_scale(n_local: int, device: torch.device | str = "cpu") -> float:
    """Factor turning a per-rank *sum* of per-item losses into this rank's share of the global mean, times k.

    ``loss_r = sum_local * global_mean_scale(n_local)`` makes DDP's gradient average equal the gradient of
    ``sum_all / n_global`` (see the module docstring). Returns ``1 / n_local`` outside torch.distributed.
    """
    sizes = gather_sizes(n_local, device)
    total = sum(sizes)
    if total == 0:
        return 0.0
    return world_size() / total


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over ranks (a detached copy), e.g. to log the global loss."""
    t = t.detach().clone()
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world_size()
    return t


_WRAPPERS_WITH_MODULE = {"DistributedDataParallel", "DataParallel", "FullyShardedDataParallel"}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under DDP / DataParallel / FSDP1 (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if type(model).__name__ in _WRAPPERS_WITH_MODULE and isinstance(
            getattr(model, "module", None), nn.Module
        ):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model
