"""How every embedding loss scores: queries against their own group, the batch, or every rank's passages.

Scores are computed in float32 with autocast off (a temperature of 0.02 multiplies similarities by 50, beyond
what bfloat16 resolves); masked columns get ``finfo.min``, not ``-inf``, so a fully masked row stays finite.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from densetune.distributed import gather_sizes, gather_with_grad, global_mean_scale, rank


def _masked_fill_value(dtype: torch.dtype) -> float:
    # NeMo Automodel masks with finfo.min rather than -inf, so a fully masked row stays finite.
    return torch.finfo(dtype).min


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def _reduce(per_query: Tensor, cross_device: bool) -> Tensor:
    """Mean over queries; across devices, this rank's share of the global mean times world_size."""
    if not cross_device:
        return per_query.mean()
    return per_query.sum() * global_mean_scale(per_query.shape[0], per_query.device)


class _Columns(NamedTuple):
    """What each query is scored against: similarities, targets, and how the passages were gathered."""

    scores: Tensor  # [B, C] raw similarities (C = n own passages, or every passage of the batch / all ranks)
    targets: Tensor  # [B] column of each query's positive, the first column of its group
    passage_sizes: list[int] | None  # passages on each rank when gathered across devices, else None
    offset: int  # index of this rank's first query in the global batch


def _columns(q: Tensor, p: Tensor, n: int, *, in_batch: bool, cross_device: bool) -> _Columns:
    """Score this rank's queries [B, H] against their own groups, or every passage (of every rank).

    Call under autocast-off with float32 inputs. Across devices the passages are gathered with gradient, so
    every rank must call this together with the same ``in_batch`` (same-task batches ensure it).
    """
    n_q = q.shape[0]
    if not in_batch:
        scores = torch.einsum("bh,bnh->bn", q, p.view(n_q, n, q.shape[1]))  # [B, n]
        return _Columns(scores, torch.zeros(n_q, dtype=torch.long, device=q.device), None, 0)
    offset, passage_sizes = 0, None
    if cross_device:
        query_sizes = gather_sizes(n_q, q.device)
        passage_sizes = [size * n for size in query_sizes]
        offset = sum(query_sizes[: rank()])
        p = gather_with_grad(p, passage_sizes)  # [P_global, H]
    targets = (offset + torch.arange(n_q, device=q.device)) * n
    return _Columns(q @ p.T, targets, passage_sizes, offset)  # scores [B, P]


class _ConfiguredLoss(nn.Module):
    """A loss whose settings are one dict: the model card shows it, ``repr`` prints it."""

    def get_config_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.get_config_dict().items())
