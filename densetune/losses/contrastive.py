"""InfoNCE with hard and in-batch negatives, cross-device columns and false-negative masking; batch -> kwargs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from densetune.data.batch import Batch, as_batch
from densetune.distributed import all_gather
from densetune.losses.scoring import _columns, _ConfiguredLoss, _masked_fill_value, _no_autocast, _reduce


def false_negative_mask(
    column_ids: Tensor, targets: Tensor, positive_doc_ids: Tensor | None = None
) -> Tensor:
    """Columns to exclude from each query's softmax because they are its positive under another copy.

    Args:
        column_ids: int64 document id of every score column, [C] (shared by all rows) or [B, C].
        targets: [B], index of each row's target column.
        positive_doc_ids: optional [B, m] ids of every known positive of each query, padded with -1
            (sibling positives that are not the target also leave the softmax).

    Returns:
        bool [B, C], True where a non-target column carries the id of the row's positive(s).
    """
    rows = torch.arange(targets.shape[0], device=targets.device)
    ids = column_ids.expand(targets.shape[0], -1) if column_ids.dim() == 1 else column_ids  # [B, C]
    positives = ids[rows, targets].unsqueeze(1)  # [B, 1]: the target column's id
    if positive_doc_ids is not None:
        extra = positive_doc_ids.to(ids.device, torch.long)
        extra = torch.where(extra < 0, positives, extra)  # -1 padding repeats the target id: no new match
        positives = torch.cat([positives, extra], dim=1)  # [B, 1+m]
    mask = (ids.unsqueeze(2) == positives.unsqueeze(1)).any(dim=2)  # [B, C]
    mask[rows, targets] = False
    return mask


def contrastive_loss_from_scores(
    scores: Tensor, targets: Tensor, exclude: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """Per-query InfoNCE: cross-entropy of ``scores / temperature`` with excluded columns removed.

    Args:
        scores: similarities [B, C].
        targets: [B] target column per row.
        exclude: optional bool [B, C]; True columns get finfo.min before the softmax (never the target).
        temperature: divides the scores.

    Returns:
        [B] losses (not reduced).
    """
    logits = scores / temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude, _masked_fill_value(logits.dtype))
    return F.cross_entropy(logits, targets, reduction="none")


IN_BATCH_SCOPES = ("all", "positives")


def other_negatives_mask(targets: Tensor, n_columns: int, n: int) -> Tensor:
    """bool [B, C]: True on the hard negatives of other queries' groups (classic NeMo SBERT leaves them out).

    Columns are groups of ``n`` (positive first); ``targets`` are each row's positive column (global index).
    """
    cols = torch.arange(n_columns, device=targets.device)
    negative = (cols % n != 0).unsqueeze(0)  # [1, C]
    own_group = (cols.unsqueeze(0) // n) == (targets.unsqueeze(1) // n)  # [B, C]
    return negative & ~own_group


class ContrastiveLoss(_ConfiguredLoss):
    """InfoNCE over each query's positive, its hard negatives and (optionally) every other passage.

    For query i the candidate columns are its own group ``[positive, neg_1, ..., neg_{n-1}]`` and, with
    ``in_batch_negatives``, the passages of every other query (of every rank with ``cross_device``); the
    target is column ``i*n`` (global index). The loss is cross-entropy over ``q @ p.T / temperature``.

    Args:
        temperature: divides cosine / dot similarities; 0.05 (sentence-transformers' MNRL scale 20, the
            recipe default measured on SciFact; NeMo configs use 0.02). Must be > 0.
        in_batch_negatives: score every query against all passages of the batch; False uses only the
            query's own group (the NeMo Automodel default without distributed negatives). A batch can
            override it (``in_batch_negatives`` input, from the batch's ``in_batch_negatives`` key).
        mask_false_negatives: needs ``passage_doc_ids``; a non-target column whose id equals the id of the
            query's positive (or of any id in ``positive_doc_ids``) is removed from the softmax: the same
            document sampled for another query, or as its own hard negative, is not a negative.
            (NeMo Automodel semantics, extended to in-batch and cross-device columns.)
        margin_mask: absolute margin (GISTEmbed / NV-Retriever style, but judged by the model itself): a
            non-target column whose similarity exceeds ``positive similarity + margin_mask`` is removed,
            as a likely unlabelled positive. None disables; 0.0 removes anything above the positive; a
            negative value is stricter. Similarities are raw (before the temperature).
        cross_device: gather passages and ids from all ranks (with gradient) and scale the loss so DDP
            yields the global-batch gradient (on by default, as in the recipe: k devices then train as one
            with the global batch). Needs ``in_batch_negatives`` to add negatives; without it only the
            scaling applies. Identity outside torch.distributed.
        in_batch_scope: which passages of other queries are in-batch negatives: ``"all"`` (every passage,
            NeMo Automodel / DPR / sentence-transformers) or ``"positives"`` (only their positives, as
            classic NeMo's SBERT scores: each query against all positives of the batch plus its own hard
            negatives). Applies only with in-batch negatives.

    Inputs:
        q: query embeddings [B, H]; p: passage embeddings [B*n, H] (groups contiguous, positive first).
        n_passages: n, passages per query (>= 1).
        passage_doc_ids: optional int64 [B*n]; needed for ``mask_false_negatives`` (without it nothing is
            masked). positive_doc_ids: optional int64 [B, m], -1 padded.
        in_batch_negatives: optional bool overriding the constructor's setting for this batch (False: each
            query scored only against its own group, as BGE-EN-ICL does for symmetric class / clustering
            batches). Under ``cross_device`` every rank must pass the same value in a step (same-task
            batches give that), since the passage gather is a collective.
        teacher_scores, task: accepted and ignored, so every embedding loss takes ``loss_inputs(batch)``.

    Returns:
        scalar loss (see the module docstring for its value under ``cross_device``).

    References:
        van den Oord et al. 2018 (InfoNCE); Karpukhin et al. 2020 (DPR, in-batch negatives);
        Moreira et al. 2024 (NV-Retriever, positive-aware false-negative removal);
        Solatorio 2024 (GISTEmbed). Relations: sentence-transformers' MultipleNegativesRankingLoss is this
        loss with temperature 1/scale and no masking.

    Example:
        >>> loss_fn = ContrastiveLoss(temperature=0.02)
        >>> q, p = model(batch)
        >>> loss = loss_fn(q, p, **loss_inputs(batch))
    """

    def __init__(
        self,
        temperature: float = 0.05,
        in_batch_negatives: bool = True,
        mask_false_negatives: bool = True,
        margin_mask: float | None = None,
        cross_device: bool = True,
        in_batch_scope: str = "all",
    ):
        super().__init__()
        if in_batch_scope not in IN_BATCH_SCOPES:
            raise ValueError(
                f"in_batch_scope must be one of {', '.join(IN_BATCH_SCOPES)}, got {in_batch_scope!r}"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (e.g. 0.02), got {temperature}")
        if margin_mask is not None and not -1e6 < float(margin_mask) < 1e6:
            raise ValueError(f"margin_mask must be a finite number or None, got {margin_mask}")
        self.temperature = float(temperature)
        self.in_batch_negatives = bool(in_batch_negatives)
        self.mask_false_negatives = bool(mask_false_negatives)
        self.margin_mask = None if margin_mask is None else float(margin_mask)
        self.cross_device = bool(cross_device)
        self.in_batch_scope = in_batch_scope

    def get_config_dict(self) -> dict[str, Any]:
        """Settings for the model card."""
        return {
            "temperature": self.temperature,
            "in_batch_negatives": self.in_batch_negatives,
            "mask_false_negatives": self.mask_false_negatives,
            "margin_mask": self.margin_mask,
            "cross_device": self.cross_device,
            "in_batch_scope": self.in_batch_scope,
        }

    def per_query(
        self,
        q: Tensor,
        p: Tensor,
        *,
        n_passages: int,
        passage_doc_ids: Tensor | None = None,
        positive_doc_ids: Tensor | None = None,
        in_batch_negatives: bool | None = None,
    ) -> Tensor:
        """Unreduced losses [B] of this rank's queries (gathers across ranks when ``cross_device``)."""
        n_q, dim = q.shape
        n = int(n_passages)
        if n < 1 or p.dim() != 2 or p.shape != (n_q * n, dim):
            raise ValueError(
                f"expected q [B, H] and p [B*n_passages, H] with n_passages={n_passages}, got "
                f"q {tuple(q.shape)} and p {tuple(p.shape)}"
            )
        if passage_doc_ids is not None and passage_doc_ids.numel() != n_q * n:
            raise ValueError(
                f"passage_doc_ids must have B*n = {n_q * n} entries, got {passage_doc_ids.numel()}"
            )
        in_batch = self.in_batch_negatives if in_batch_negatives is None else bool(in_batch_negatives)
        ids = passage_doc_ids.reshape(-1).to(q.device, torch.long) if passage_doc_ids is not None else None
        with _no_autocast(q.device):
            cols = _columns(q.float(), p.float(), n, in_batch=in_batch, cross_device=self.cross_device)
            scores, targets = cols.scores, cols.targets
            column_ids = None  # [P] shared by all rows, or [B, n] for own groups
            if cols.passage_sizes is not None and self.mask_false_negatives:
                if ids is None:
                    # Ranks may differ in having ids (the collator sends them only when every doc has one),
                    # yet all must join the gather: stand in unique negative ids, which match nothing
                    # (real ids are >= 0).
                    ids = -1 - (cols.offset * n + torch.arange(n_q * n, device=q.device))
                column_ids = all_gather(ids, cols.passage_sizes)  # [P_global]
            elif ids is not None:
                column_ids = ids if in_batch else ids.view(n_q, n)
            exclude = None
            if self.mask_false_negatives and column_ids is not None:
                exclude = false_negative_mask(column_ids, targets, positive_doc_ids)
            if in_batch and self.in_batch_scope == "positives" and n > 1:
                others = other_negatives_mask(targets, scores.shape[1], n)
                exclude = others if exclude is None else exclude | others
            if self.margin_mask is not None:
                rows = torch.arange(n_q, device=q.device)
                threshold = scores.detach()[rows, targets].unsqueeze(1) + self.margin_mask  # [B, 1]
                above = scores.detach() > threshold
                above[rows, targets] = False
                exclude = above if exclude is None else exclude | above
            return contrastive_loss_from_scores(scores, targets, exclude, self.temperature)

    def forward(
        self,
        q: Tensor,
        p: Tensor,
        *,
        n_passages: int,
        passage_doc_ids: Tensor | None = None,
        positive_doc_ids: Tensor | None = None,
        teacher_scores: Tensor | None = None,
        task: str | None = None,
        in_batch_negatives: bool | None = None,
    ) -> Tensor:
        losses = self.per_query(
            q,
            p,
            n_passages=n_passages,
            passage_doc_ids=passage_doc_ids,
            positive_doc_ids=positive_doc_ids,
            in_batch_negatives=in_batch_negatives,
        )
        return _reduce(losses, self.cross_device)


def loss_inputs(batch: Batch | Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of the embedding losses, read from a collated bi-encoder batch.

    ``batch`` is a :class:`~densetune.data.batch.Batch` or a seed collator's dict of the same names. Returns
    ``n_passages`` (rows of ``d_input_ids`` per row of ``q_input_ids``) and, when not None,
    ``passage_doc_ids``, ``positive_doc_ids``, ``teacher_scores``, ``in_batch_negatives`` (a bool switching
    in-batch negatives for this batch) and ``task`` (a string, or a list of one repeated string).

    Raises:
        ValueError: when the passage rows are not a multiple of the query rows, or ``in_batch_negatives`` is
            not a bool.
    """
    batch = as_batch(batch)
    n_queries = batch.q_input_ids.shape[0]  # type: ignore[union-attr]
    n_docs = batch.d_input_ids.shape[0]  # type: ignore[union-attr]
    if n_queries == 0 or n_docs % n_queries:
        raise ValueError(f"batch has {n_docs} passage rows for {n_queries} queries: expected a multiple")
    out: dict[str, Any] = {"n_passages": n_docs // n_queries}
    for key in ("passage_doc_ids", "positive_doc_ids", "teacher_scores"):
        if getattr(batch, key) is not None:
            out[key] = getattr(batch, key)
    flag = batch.in_batch_negatives
    if isinstance(flag, Tensor) and flag.dtype == torch.bool and flag.numel() == 1:
        flag = bool(flag)
    if flag is not None:
        if not isinstance(flag, bool):
            raise ValueError(f"batch['in_batch_negatives'] must be True or False, got {flag!r}")
        out["in_batch_negatives"] = flag
    task = batch.task
    if isinstance(task, (list, tuple)) and task and all(t == task[0] for t in task):
        task = task[0]
    if isinstance(task, str):
        out["task"] = task
    return out
