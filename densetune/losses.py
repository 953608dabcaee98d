"""Retrieval losses: embeddings (plus document ids and teacher scores) in, one scalar out.

API:
    ContrastiveLoss(temperature=0.02, in_batch_negatives=True, mask_false_negatives=True,
                    margin_mask=None, cross_device=False)
        loss(q [B, H], p [B*n, H], *, n_passages, passage_doc_ids=None, positive_doc_ids=None) -> scalar
    DistillationLoss(kind="kl", teacher_temperature=1.0, student_temperature=0.02)
        loss(student_scores [B, n], teacher_scores [B, n]) -> scalar
    RetrievalObjective(contrastive=None, distillation=None, contrastive_weight=1.0, distill_weight=1.0,
                       task_weights=None)
        loss(q, p, *, n_passages, passage_doc_ids=None, positive_doc_ids=None, teacher_scores=None, task=None)
    loss_inputs(batch) -> dict        keyword arguments of the embedding losses, read from a collated batch
    contrastive_loss_from_scores(scores, targets, exclude=None, temperature=1.0) -> [B] per-query losses
    false_negative_mask(column_ids, targets, positive_doc_ids=None) -> bool [B, C]

Layout of a batch (the collators' contract): query i owns passages ``p[i*n : (i+1)*n]``, its positive
first, then n-1 hard negatives. ``passage_doc_ids`` [B*n] are int64 ids (``doc_id_to_int64``) aligned
with ``p``.

Every embedding loss (ContrastiveLoss, RetrievalObjective) takes the same keyword arguments, those built
by :func:`loss_inputs`, so the training loop and :func:`densetune.train.gradcache.grad_cache_step` call
any of them as ``loss_fn(q, p, **loss_inputs(batch))``. Scores are computed in float32 with autocast
off: a temperature of 0.02 multiplies similarities by 50, beyond what bfloat16 resolves.

Cross-device negatives: with ``cross_device=True`` the loss gathers the passages (and their ids) of every
rank with :func:`densetune.train.distributed.gather_with_grad` itself, so the model's forward stays
local. Each rank scores its own queries against all passages and returns
``world_size * sum(local losses) / global number of queries``; DDP's gradient average then equals the
gradient of the global-batch mean loss exactly (see densetune/train/distributed.py). The value is the
global loss only after averaging over ranks (``all_reduce_mean``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densetune.train.distributed import all_gather, gather_sizes, gather_with_grad, global_mean_scale, rank

__all__ = [
    "ContrastiveLoss",
    "DistillationLoss",
    "RetrievalObjective",
    "contrastive_loss_from_scores",
    "false_negative_mask",
    "loss_inputs",
]

DISTILL_KINDS = ("kl", "stable_distill", "margin_mse")


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


class ContrastiveLoss(nn.Module):
    """InfoNCE over each query's positive, its hard negatives and (optionally) every other passage.

    For query i the candidate columns are its own group ``[positive, neg_1, ..., neg_{n-1}]`` and, with
    ``in_batch_negatives``, the passages of every other query (of every rank with ``cross_device``); the
    target is column ``i*n`` (global index). The loss is cross-entropy over ``q @ p.T / temperature``.

    Args:
        temperature: divides cosine / dot similarities (0.02 in NeMo configs; sentence-transformers' MNRL
            scale 20 is 0.05). Must be > 0.
        in_batch_negatives: score every query against all passages of the batch; False uses only the
            query's own group (the NeMo Automodel default without distributed negatives).
        mask_false_negatives: needs ``passage_doc_ids``; a non-target column whose id equals the id of the
            query's positive (or of any id in ``positive_doc_ids``) is removed from the softmax: the same
            document sampled for another query, or as its own hard negative, is not a negative.
            (NeMo Automodel semantics, extended to in-batch and cross-device columns.)
        margin_mask: absolute margin (GISTEmbed / NV-Retriever style, but judged by the model itself): a
            non-target column whose similarity exceeds ``positive similarity + margin_mask`` is removed,
            as a likely unlabelled positive. None disables; 0.0 removes anything above the positive; a
            negative value is stricter. Similarities are raw (before the temperature).
        cross_device: gather passages and ids from all ranks (with gradient) and scale the loss so DDP
            yields the global-batch gradient. Needs ``in_batch_negatives`` to add negatives; without it
            only the scaling applies. Identity outside torch.distributed.

    Inputs:
        q: query embeddings [B, H]; p: passage embeddings [B*n, H] (groups contiguous, positive first).
        n_passages: n, passages per query (>= 1).
        passage_doc_ids: optional int64 [B*n]; needed for ``mask_false_negatives`` (without it nothing is
            masked). positive_doc_ids: optional int64 [B, m], -1 padded.
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
        temperature: float = 0.02,
        in_batch_negatives: bool = True,
        mask_false_negatives: bool = True,
        margin_mask: float | None = None,
        cross_device: bool = False,
    ):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (e.g. 0.02), got {temperature}")
        if margin_mask is not None and not -1e6 < float(margin_mask) < 1e6:
            raise ValueError(f"margin_mask must be a finite number or None, got {margin_mask}")
        self.temperature = float(temperature)
        self.in_batch_negatives = bool(in_batch_negatives)
        self.mask_false_negatives = bool(mask_false_negatives)
        self.margin_mask = None if margin_mask is None else float(margin_mask)
        self.cross_device = bool(cross_device)

    def get_config_dict(self) -> dict[str, Any]:
        """Settings for the model card."""
        return {
            "temperature": self.temperature,
            "in_batch_negatives": self.in_batch_negatives,
            "mask_false_negatives": self.mask_false_negatives,
            "margin_mask": self.margin_mask,
            "cross_device": self.cross_device,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.get_config_dict().items())

    def per_query(
        self,
        q: Tensor,
        p: Tensor,
        *,
        n_passages: int,
        passage_doc_ids: Tensor | None = None,
        positive_doc_ids: Tensor | None = None,
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
        ids = passage_doc_ids.reshape(-1).to(q.device, torch.long) if passage_doc_ids is not None else None
        with _no_autocast(q.device):
            q, p = q.float(), p.float()
            if self.in_batch_negatives:
                offset = 0
                if self.cross_device:
                    query_sizes = gather_sizes(n_q, q.device)
                    passage_sizes = [size * n for size in query_sizes]
                    offset = sum(query_sizes[: rank()])
                    p = gather_with_grad(p, passage_sizes)  # [P_global, H]
                    if self.mask_false_negatives:
                        if ids is None:
                            # Ranks may differ in having ids (the collator sends them only when every doc
                            # has one), yet all must join the gather: stand in unique negative ids, which
                            # match nothing (real ids are >= 0).
                            ids = -1 - (offset * n + torch.arange(n_q * n, device=q.device))
                        ids = all_gather(ids, passage_sizes)  # [P_global]
                scores = q @ p.T  # [B, P]
                targets = (offset + torch.arange(n_q, device=q.device)) * n
                column_ids = ids  # [P]
            else:
                scores = torch.einsum("bh,bnh->bn", q, p.view(n_q, n, dim))  # [B, n]
                targets = torch.zeros(n_q, dtype=torch.long, device=q.device)
                column_ids = ids.view(n_q, n) if ids is not None else None
            exclude = None
            if self.mask_false_negatives and column_ids is not None:
                exclude = false_negative_mask(column_ids, targets, positive_doc_ids)
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
    ) -> Tensor:
        losses = self.per_query(
            q, p, n_passages=n_passages, passage_doc_ids=passage_doc_ids, positive_doc_ids=positive_doc_ids
        )
        return _reduce(losses, self.cross_device)


class DistillationLoss(nn.Module):
    """Distil a teacher's scores over each query's group ``[positive, neg_1, ..., neg_{n-1}]``.

    Args:
        kind:
            ``kl``: KL(softmax(teacher / teacher_temperature) || softmax(student / student_temperature)),
            summed over the group, mean over queries (LLM-Embedder, sentence-transformers DistillKLDiv;
            FlagEmbedding's ``kl_div`` is the cross-entropy form, equal up to the teacher's entropy).
            ``stable_distill``: FlagEmbedding's listwise loss (LLM-Embedder ``stable_distill``, BGE-M3
            ``m3_kd_loss``): documents in teacher order d_1 > d_2 > ...; for each k, cross-entropy of
            picking d_k among the documents not ranked above it, weighted by the teacher's softmax
            probability of d_k. The teacher order is taken here by sorting the teacher scores, so the data
            need not be pre-sorted.
            ``margin_mse``: MSE between student and teacher margins ``s_pos - s_neg`` per negative
            (Hofstätter et al. 2020); temperatures are not used. For rerankers and bi-encoders alike.
        teacher_temperature: divides teacher scores (``kl``, ``stable_distill``). > 0.
        student_temperature: divides student scores (``kl``, ``stable_distill``); 0.02 matches
            ContrastiveLoss's default so cosine similarities are put on the same scale. > 0.

    Inputs:
        student_scores: [B, n] similarities of each query with its own group; or [B, C] with
            ``group_start`` [B] giving the first column of each query's group (in-batch columns then act as
            extra competitors for ``stable_distill`` as in LLM-Embedder; ``kl`` and ``margin_mse`` use the
            group's columns only).
        teacher_scores: [B, n] (or [B*n]) teacher scores aligned with the group.

    Returns:
        scalar (mean over queries); :meth:`per_query` gives the unreduced [B].

    References:
        Hinton et al. 2015; Zhang et al. 2023 (LLM-Embedder); Chen et al. 2024 (BGE M3);
        Hofstätter et al. 2020 (MarginMSE).
    """

    def __init__(self, kind: str = "kl", teacher_temperature: float = 1.0, student_temperature: float = 0.02):
        super().__init__()
        if kind not in DISTILL_KINDS:
            raise ValueError(
                f"unknown distillation kind {kind!r}: expected one of {', '.join(DISTILL_KINDS)}"
            )
        for name, value in (
            ("teacher_temperature", teacher_temperature),
            ("student_temperature", student_temperature),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.kind = kind
        self.teacher_temperature = float(teacher_temperature)
        self.student_temperature = float(student_temperature)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "teacher_temperature": self.teacher_temperature,
            "student_temperature": self.student_temperature,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.get_config_dict().items())

    def per_query(
        self, student_scores: Tensor, teacher_scores: Tensor, *, group_start: Tensor | None = None
    ) -> Tensor:
        """Unreduced losses [B]."""
        n_q = student_scores.shape[0]
        with _no_autocast(student_scores.device):
            student = student_scores.float()
            teacher = teacher_scores.detach().float().to(student.device).reshape(n_q, -1)  # [B, n]
            n = teacher.shape[1]
            if group_start is None:
                if student.shape != teacher.shape:
                    raise ValueError(
                        f"student_scores {tuple(student.shape)} and teacher_scores {tuple(teacher.shape)} differ; "
                        "pass group_start for in-batch student scores"
                    )
                columns = torch.arange(n, device=student.device).expand(n_q, n)
            else:
                columns = group_start.to(student.device, torch.long).unsqueeze(1) + torch.arange(
                    n, device=student.device
                )
            own = student.gather(1, columns)  # [B, n]
            if self.kind == "margin_mse":
                student_margin = own[:, :1] - own[:, 1:]  # [B, n-1]
                teacher_margin = teacher[:, :1] - teacher[:, 1:]
                return ((student_margin - teacher_margin) ** 2).mean(dim=1)
            target = F.softmax(teacher / self.teacher_temperature, dim=1)  # [B, n]
            if self.kind == "kl":
                log_student = F.log_softmax(own / self.student_temperature, dim=1)
                return F.kl_div(log_student, target, reduction="none").sum(dim=1)
            return self._stable_distill(student / self.student_temperature, target, teacher, columns)

    @staticmethod
    def _stable_distill(logits: Tensor, target: Tensor, teacher: Tensor, columns: Tensor) -> Tensor:
        # logits [B, C]; target/teacher/columns [B, n]
        rows = torch.arange(logits.shape[0], device=logits.device)
        order = torch.sort(teacher, dim=1, descending=True, stable=True).indices  # teacher ranking
        ranked_columns = columns.gather(1, order)  # [B, n]
        ranked_weights = target.gather(1, order)  # [B, n]
        removed = torch.zeros_like(logits, dtype=torch.bool)
        total = logits.new_zeros(logits.shape[0])
        for k in range(ranked_columns.shape[1]):
            column = ranked_columns[:, k]
            step = F.cross_entropy(
                logits.masked_fill(removed, _masked_fill_value(logits.dtype)), column, reduction="none"
            )
            total = total + ranked_weights[:, k] * step
            removed = removed.clone()
            removed[rows, column] = True  # documents ranked above the next one leave its softmax
        return total

    def forward(
        self, student_scores: Tensor, teacher_scores: Tensor, *, group_start: Tensor | None = None
    ) -> Tensor:
        return self.per_query(student_scores, teacher_scores, group_start=group_start).mean()


class RetrievalObjective(nn.Module):
    """Weighted sum of a contrastive loss and a distillation loss, with optional per-task weights.

    ``loss = contrastive_weight * contrastive(q, p) + distill_weight * distillation(s, teacher_scores)``
    where ``s`` [B, n] are the similarities of each query with its own group. The distillation term is
    skipped for a batch without teacher scores (LLM-Embedder mixes tasks with and without them); a batch
    where no term applies is an error.

    Args:
        contrastive: a :class:`ContrastiveLoss`, or None.
        distillation: a :class:`DistillationLoss`, or None.
        contrastive_weight, distill_weight: default weights (>= 0). LLM-Embedder uses 0.2 and 1.0.
        task_weights: ``{task: {"contrastive_weight": w, "distill_weight": w}}`` overriding the defaults
            for batches whose ``task`` matches (batches come from one task with the same-task sampler).

    Inputs: as :class:`ContrastiveLoss`, plus ``teacher_scores`` [B, n] and ``task``.

    Under ``contrastive.cross_device`` the distillation term is scaled the same way as the contrastive one.
    """

    def __init__(
        self,
        contrastive: ContrastiveLoss | None = None,
        distillation: DistillationLoss | None = None,
        *,
        contrastive_weight: float = 1.0,
        distill_weight: float = 1.0,
        task_weights: Mapping[str, Mapping[str, float]] | None = None,
    ):
        super().__init__()
        if contrastive is None and distillation is None:
            raise ValueError("RetrievalObjective needs a contrastive loss, a distillation loss, or both")
        for name, value in (("contrastive_weight", contrastive_weight), ("distill_weight", distill_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.contrastive = contrastive
        self.distillation = distillation
        self.contrastive_weight = float(contrastive_weight)
        self.distill_weight = float(distill_weight)
        self.task_weights: dict[str, dict[str, float]] = {}
        for task, weights in (task_weights or {}).items():
            unknown = set(weights) - {"contrastive_weight", "distill_weight"}
            if unknown:
                raise ValueError(
                    f"task_weights[{task!r}]: unknown keys {sorted(unknown)}; expected contrastive_weight, distill_weight"
                )
            if any(not float(v) >= 0 for v in weights.values()):
                raise ValueError(f"task_weights[{task!r}]: weights must be >= 0, got {dict(weights)}")
            self.task_weights[str(task)] = {k: float(v) for k, v in weights.items()}

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "contrastive": self.contrastive.get_config_dict() if self.contrastive is not None else None,
            "distillation": self.distillation.get_config_dict() if self.distillation is not None else None,
            "contrastive_weight": self.contrastive_weight,
            "distill_weight": self.distill_weight,
            "task_weights": self.task_weights,
        }

    def weights_for(self, task: str | None) -> tuple[float, float]:
        """(contrastive_weight, distill_weight) for a batch of ``task``."""
        weights = self.task_weights.get(task, {}) if task is not None else {}
        return (
            weights.get("contrastive_weight", self.contrastive_weight),
            weights.get("distill_weight", self.distill_weight),
        )

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
    ) -> Tensor:
        contrastive_weight, distill_weight = self.weights_for(task)
        terms: list[Tensor] = []
        if self.contrastive is not None and contrastive_weight > 0:
            contrastive = self.contrastive(
                q,
                p,
                n_passages=n_passages,
                passage_doc_ids=passage_doc_ids,
                positive_doc_ids=positive_doc_ids,
            )
            terms.append(contrastive_weight * contrastive)
        if self.distillation is not None and distill_weight > 0 and teacher_scores is not None:
            n_q, dim = q.shape
            with _no_autocast(q.device):
                student = torch.einsum(
                    "bh,bnh->bn", q.float(), p.float().view(n_q, n_passages, dim)
                )  # [B, n]
            per_query = self.distillation.per_query(student, teacher_scores)
            cross_device = self.contrastive is not None and self.contrastive.cross_device
            terms.append(distill_weight * _reduce(per_query, cross_device))
        if not terms:
            raise ValueError(
                f"no loss term applies to this batch (task={task!r}): distillation needs teacher_scores in the "
                "batch, or give the contrastive loss a weight > 0"
            )
        return torch.stack(terms).sum()


def loss_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of the embedding losses, read from a collated bi-encoder batch.

    Returns ``n_passages`` (rows of ``d_input_ids`` per row of ``q_input_ids``) and, when present and not
    None, ``passage_doc_ids``, ``positive_doc_ids``, ``teacher_scores`` and ``task`` (a string, or a list
    of one repeated string).

    Raises:
        ValueError: when the passage rows are not a multiple of the query rows.
    """
    n_queries = batch["q_input_ids"].shape[0]
    n_docs = batch["d_input_ids"].shape[0]
    if n_queries == 0 or n_docs % n_queries:
        raise ValueError(f"batch has {n_docs} passage rows for {n_queries} queries: expected a multiple")
    out: dict[str, Any] = {"n_passages": n_docs // n_queries}
    for key in ("passage_doc_ids", "positive_doc_ids", "teacher_scores"):
        if batch.get(key) is not None:
            out[key] = batch[key]
    task = batch.get("task")
    if isinstance(task, (list, tuple)) and task and all(t == task[0] for t in task):
        task = task[0]
    if isinstance(task, str):
        out["task"] = task
    return out
