"""Gradient cache: the gradient of a contrastive loss over a large batch, in memory for one small chunk.

API:
    grad_cache_step(model, loss_fn, batch, *, chunk_size, passage_chunk_size=None, loss_kwargs=None,
                    scale=1.0, scaler=None) -> detached scalar loss (parameter gradients accumulated in .grad)

How (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"):
  1. embed the batch chunk by chunk without autograd graphs, saving the RNG state before each chunk;
  2. compute the loss on all embeddings held as leaf tensors and backpropagate to them only:
     d loss / d embedding, [B, H] and [B*n, H];
  3. re-run each chunk with autograd under its saved RNG state (dropout masks match the first pass) and
     backpropagate ``sum(embedding * its cached gradient)``, which adds exactly that chunk's share of
     d loss / d parameters.
Memory: activations of one chunk plus the embeddings, instead of the whole batch. Time: one extra
forward pass (about +20-30%).

Contract with the model: ``model(sub_batch) -> (q, p)`` where a sub-batch is a
:class:`~densetune.data.batch.Batch` with only the ``q_*`` fields, only the ``d_*`` fields, or both, and absent
sides come back as None (BiEncoder.forward does this). The
last call embeds the last query chunk and the last passage chunk together, so every tower takes part in
the one forward pass that DDP synchronises; the earlier ones run under ``model.no_sync()``. Wrap the
model in DDP as usual; the first pass calls the unwrapped module (no graph, nothing to synchronise).

Cross-device negatives compose: ``loss_fn`` (e.g. ``ContrastiveLoss(cross_device=True)``) gathers the
cached embeddings with ``gather_with_grad``, whose backward hands each rank the gradient of every rank's
loss with respect to its own embeddings, which step 3 then pushes through the local chunks.

``loss_fn`` is either an embedding loss whose signature has the keyword ``n_passages``
(ContrastiveLoss, RetrievalObjective), called as ``loss_fn(q, p, **loss_inputs(batch))`` (or with
``loss_kwargs``), or any other callable, called as ``loss_fn(q, p, batch)`` with the batch it was given. ``scale`` multiplies the loss
before its backward (1 / accumulation steps); with a GradScaler (float16) pass ``scaler`` as well. The
cached gradients and the parameter gradients then carry the same factor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from densetune.data.batch import Batch, as_batch
from densetune.distributed import unwrap_model
from densetune.losses import loss_inputs


class _RngState:
    """CPU and CUDA generator states captured before a chunk's forward pass, replayed for its second pass."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.cuda_device = device.index if device.type == "cuda" else None
        if self.cuda_device is None and device.type == "cuda":
            self.cuda_device = torch.cuda.current_device()
        self.cuda = torch.cuda.get_rng_state(self.cuda_device) if self.cuda_device is not None else None

    @contextmanager
    def replay(self) -> Iterator[None]:
        devices = [self.cuda_device] if self.cuda_device is not None else []
        # fork_rng restores the generators on exit, so the step leaves the RNG where pass 1 left it.
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.cuda_device)
            yield


def _slice_side(batch: Batch, prefix: str, start: int, stop: int) -> dict[str, Tensor]:
    """Rows [start, stop) of one side's tensors (``prefix`` ``"q_"`` or ``"d_"``), as ``Batch`` field names,
    dropping trailing columns that are padding in every row."""
    part = {prefix + k: v[start:stop] for k, v in batch.side(prefix).items()}
    mask = part[prefix + "attention_mask"]
    if mask.dim() == 2:
        # Right padding only: trailing all-pad columns change nothing (masked keys), so dropping them is
        # exact and saves compute. Leading pad columns are kept: removing them would shift positions.
        used = mask.any(dim=0).nonzero()
        length = int(used.max().item()) + 1 if used.numel() else mask.shape[1]
        part = {
            k: v[:, :length] if v.dim() == 2 and v.shape[1] == mask.shape[1] else v for k, v in part.items()
        }
    return part


def _plan(batch: Batch | Mapping[str, Any], q_chunk: int, p_chunk: int) -> list[Batch]:
    """Sub-batches in call order: query chunks, passage chunks, then the last of each together."""
    batch = as_batch(batch)
    n_q, n_d = batch.q_input_ids.shape[0], batch.d_input_ids.shape[0]  # type: ignore[union-attr]
    q_parts = [_slice_side(batch, "q_", s, min(s + q_chunk, n_q)) for s in range(0, n_q, q_chunk)]
    d_parts = [_slice_side(batch, "d_", s, min(s + p_chunk, n_d)) for s in range(0, n_d, p_chunk)]
    return [Batch(**part) for part in q_parts[:-1] + d_parts[:-1] + [{**q_parts[-1], **d_parts[-1]}]]


def _takes_loss_inputs(loss_fn: Callable[..., Tensor]) -> bool:
    target = loss_fn.forward if isinstance(loss_fn, nn.Module) else loss_fn
    try:
        return "n_passages" in inspect.signature(target).parameters
    except (TypeError, ValueError):  # builtins and C callables have no signature
        return False


def _call_loss(loss_fn, q: Tensor, p: Tensor, batch: Batch | Mapping[str, Any], loss_kwargs) -> Tensor:
    if loss_kwargs is not None or _takes_loss_inputs(loss_fn):
        return loss_fn(q, p, **(loss_inputs(batch) if loss_kwargs is None else dict(loss_kwargs)))
    return loss_fn(q, p, batch)


def grad_cache_step(
    model: nn.Module,
    loss_fn: Callable[..., Tensor],
    batch: Batch | Mapping[str, Any],
    *,
    chunk_size: int,
    passage_chunk_size: int | None = None,
    loss_kwargs: Mapping[str, Any] | None = None,
    scale: float = 1.0,
    scaler: Any | None = None,
) -> Tensor:
    """Forward + backward of ``loss_fn(model(batch))`` in chunks; accumulates parameter gradients.

    Args:
        model: a BiEncoder (or DDP around one); ``model(sub_batch) -> (q | None, p | None)``.
        loss_fn: an embedding loss ``loss_fn(q [B, H], p [B*n, H], *, n_passages, ...)`` called with
            ``loss_kwargs`` (default ``loss_inputs(batch)``), or a callable ``loss_fn(q, p, batch)``.
        batch: a :class:`~densetune.data.batch.Batch` (or a seed collator's dict of its names: ``q_input_ids``,
            ``q_attention_mask``, ``d_input_ids``, ``d_attention_mask``, optional ``*_token_type_ids``,
            ``passage_doc_ids``, ...), on the device.
        chunk_size: rows per forward pass for queries (and passages unless ``passage_chunk_size``).
        passage_chunk_size: rows per forward pass for passages.
        loss_kwargs: keyword arguments for an embedding loss; default ``loss_inputs(batch)``.
        scale: factor on the loss for its backward (e.g. 1 / gradient accumulation steps).
        scaler: a ``torch.amp.GradScaler`` to scale the loss with (float16 training), or None.

    Returns:
        the loss (without ``scale``), detached. Gradients are *added* to ``.grad`` (zero them before,
        step after), as ``(scale * loss_fn(*model(batch), ...)).backward()`` would, up to floating-point
        order.
    """
    if chunk_size < 1 or (passage_chunk_size is not None and passage_chunk_size < 1):
        raise ValueError(
            f"chunk sizes must be >= 1, got chunk_size={chunk_size}, passage_chunk_size={passage_chunk_size}"
        )
    plan = _plan(batch, chunk_size, passage_chunk_size or chunk_size)
    device = plan[-1].q_input_ids.device  # type: ignore[union-attr]  # the last sub-batch has both sides
    module = unwrap_model(model)

    # Pass 1: embeddings without graphs; remember each chunk's RNG state.
    states: list[_RngState] = []
    q_parts: list[Tensor] = []
    p_parts: list[Tensor] = []
    with torch.no_grad():
        for sub in plan:
            states.append(_RngState(device))
            q, p = module(sub)
            if q is not None:
                q_parts.append(q)
            if p is not None:
                p_parts.append(p)

    # Pass 2: the loss and its gradient with respect to the embeddings only.
    q_all = torch.cat(q_parts).detach().requires_grad_(True)  # [B, H]
    p_all = torch.cat(p_parts).detach().requires_grad_(True)  # [B*n, H]
    loss = _call_loss(loss_fn, q_all, p_all, batch, loss_kwargs)
    scaled = loss * scale if scale != 1.0 else loss
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    # A side the loss does not depend on has no gradient: zeros keep pass 3 (and DDP's last sync) uniform.
    q_grad = q_all.grad if q_all.grad is not None else torch.zeros_like(q_all)
    p_grad = p_all.grad if p_all.grad is not None else torch.zeros_like(p_all)
    q_grads = list(q_grad.split([t.shape[0] for t in q_parts]))
    p_grads = list(p_grad.split([t.shape[0] for t in p_parts]))

    # Pass 3: replay each chunk with autograd and push the cached gradients through it.
    no_sync = getattr(model, "no_sync", None)
    for index, (sub, state) in enumerate(zip(plan, states)):
        last = index == len(plan) - 1
        sync_context = no_sync() if (no_sync is not None and not last) else nullcontext()
        with sync_context, state.replay():
            q, p = model(sub)
            surrogate = []
            if q is not None:
                surrogate.append((q * q_grads.pop(0)).sum())
            if p is not None:
                surrogate.append((p * p_grads.pop(0)).sum())
            torch.stack(surrogate).sum().backward()
    return loss.detach()
