"""The typed training batch: what the collators make and the models, losses and gradient cache read by name.

Two kinds, one per model kind:

- :class:`Batch` (bi-encoders, LLM embedders), B queries with n documents each, positive first::

      q_input_ids, q_attention_mask   [B, Lq]   (+ q_token_type_ids when a seed's tokenizer made them)
      d_input_ids, d_attention_mask   [B*n, Lp] rows i*n .. i*n+n-1 are query i's documents
      labels                          [B]       zeros: the positive is column 0 of each group
      passage_doc_ids                 [B*n]     int64 document-id hashes, or None when a document has no id
      positive_doc_ids                [B]       int64 hashes of each query's positives, or None
      teacher_scores                  [B, n]    or None
      task                            str       the batch's task when its groups share one, else None
      in_batch_negatives              bool      False: score each query against its own group only; None:
                                                the loss's own setting

- :class:`PairBatch` (cross-encoder rerankers): ``input_ids``, ``attention_mask`` (+ ``token_type_ids``)
  [B*n, L], one row per (query, document), positive first; ``labels`` [B]; ``n_passages``; optional
  ``teacher_scores`` [B, n] and ``row_labels`` [B*n] (BCE).

Both carry ``query_ids`` (for messages about a batch), move to a device with :meth:`Batch.to` and pin their
tensors for the DataLoader's ``pin_memory=True`` (torch calls :meth:`Batch.pin_memory`). The seeds' dict
form (NeMo Automodel's keys, the same names) is made only at the seed collators' boundary
(:meth:`Batch.to_dict`) and read back with :func:`as_batch` / :func:`as_pair_batch` / :func:`typed_batch`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["Batch", "PairBatch", "as_batch", "as_pair_batch", "typed_batch"]

_B = TypeVar("_B", bound="_TensorRecord")


class _TensorRecord:
    """Device moves, pinning and the seeds' dict form, shared by both batch kinds (dataclasses)."""

    def _map_tensors(self: _B, fn: Any) -> _B:
        changes = {
            f.name: fn(value)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if isinstance(value := getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to(self: _B, device: torch.device | str) -> _B:
        """The batch with every tensor on ``device`` (non-blocking: pinned host memory copies asynchronously)."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self: _B) -> _B:
        """The batch with its tensors in pinned memory (the DataLoader's ``pin_memory=True`` calls this)."""
        return self._map_tensors(lambda t: t.pin_memory())

    def to_dict(self) -> dict[str, Any]:
        """The seeds' dict: every field that is set (not None), by its name; ``query_ids`` left out."""
        return {
            f.name: value
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.name != "query_ids" and (value := getattr(self, f.name)) is not None
        }

    @classmethod
    def from_mapping(cls: type[_B], batch: Mapping[str, Any]) -> _B:
        """A batch from a seed collator's dict (or BatchEncoding); keys that are no field are left out."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in batch.items() if k in names})


@dataclass
class Batch(_TensorRecord):
    """A bi-encoder batch (see the module docstring for shapes); a side whose ids are None is absent."""

    q_input_ids: Tensor | None = None
    q_attention_mask: Tensor | None = None
    d_input_ids: Tensor | None = None
    d_attention_mask: Tensor | None = None
    labels: Tensor | None = None
    passage_doc_ids: Tensor | None = None
    positive_doc_ids: Tensor | None = None
    teacher_scores: Tensor | None = None
    task: Any = None
    in_batch_negatives: Any = None
    q_token_type_ids: Tensor | None = None
    d_token_type_ids: Tensor | None = None
    query_ids: list[str] = field(default_factory=list)

    def side(self, prefix: str) -> dict[str, Tensor]:
        """``{"input_ids", "attention_mask"[, "token_type_ids"]}`` of one side, ``prefix`` ``"q_"`` or ``"d_"``."""
        out = {}
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            value = getattr(self, prefix + name)
            if value is not None:
                out[name] = value
        return out


@dataclass
class PairBatch(_TensorRecord):
    """A cross-encoder batch: one row per (query, document) pair, each query's n rows contiguous."""

    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Tensor | None = None
    labels: Tensor | None = None
    n_passages: int | None = None
    teacher_scores: Tensor | None = None
    row_labels: Tensor | None = None
    query_ids: list[str] = field(default_factory=list)


def as_batch(batch: Batch | Mapping[str, Any]) -> Batch:
    """``batch`` itself, or the :class:`Batch` of a seed collator's dict (``q_*`` / ``d_*`` keys)."""
    return batch if isinstance(batch, Batch) else Batch.from_mapping(batch)


def as_pair_batch(batch: PairBatch | Mapping[str, Any]) -> PairBatch:
    """``batch`` itself, or the :class:`PairBatch` of a seed collator's dict / BatchEncoding."""
    return batch if isinstance(batch, PairBatch) else PairBatch.from_mapping(batch)


def typed_batch(batch: Batch | PairBatch | Mapping[str, Any]) -> Batch | PairBatch:
    """A typed batch of a seed collator's output: a dict with ``input_ids`` (pairs, NeMo Automodel's
    ``CrossEncoderCollator``) is a :class:`PairBatch`, one with ``q_*`` / ``d_*`` keys a :class:`Batch`."""
    if isinstance(batch, (Batch, PairBatch)):
        return batch
    return PairBatch.from_mapping(batch) if "input_ids" in batch else Batch.from_mapping(batch)
