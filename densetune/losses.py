"""Retrieval losses: embeddings (plus document ids and teacher scores) in, one scalar out.

API:
    ContrastiveLoss(temperature=0.02, in_batch_negatives=True, mask_false_negatives=True,
                    margin_mask=None, cross_device=False)
        loss(q [B, H], p [B*n, H], *, n_passages, passage_doc_ids=None, positive_doc_ids=None,
             in_batch_negatives=None) -> scalar
    DistillationLoss(kind="kl", teacher_temperature=1.0, student_temperature=0.02)
        loss(student_scores [B, n], teacher_scores [B, n]) -> scalar
    RetrievalObjective(contrastive=None, distillation=None, contrastive_weight=1.0, distill_weight=1.0,
                       task_weights=None, use_train_config=False)
        loss(q, p, *, n_passages, passage_doc_ids=None, positive_doc_ids=None, teacher_scores=None, task=None,
             in_batch_negatives=None)
    loss_inputs(batch) -> dict        keyword arguments of the embedding losses, read from a collated batch
    train_config_loss(config)         LLM-Embedder's per-task loss settings (TASK_CONFIG[config]["training"])
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

import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densetune.data.prompts import TASK_CONFIG, train_config_name
from densetune.errors import ConfigError
from densetune.train.distributed import all_gather, gather_sizes, gather_with_grad, global_mean_scale, rank

__all__ = [
    "ContrastiveLoss",
    "DistillationLoss",
    "RetrievalObjective",
    "contrastive_loss_from_scores",
    "false_negative_mask",
    "loss_inputs",
    "train_config_loss",
]

logger = logging.getLogger(__name__)

DISTILL_KINDS = ("kl", "stable_distill", "margin_mse")
# What one task_weights entry may set (RetrievalObjective).
TASK_LOSS_KEYS = (
    "contrastive_weight",
    "distill_weight",
    "teacher_temperature",
    "student_temperature",
    "distill_kind",
)


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


class _ConfiguredLoss(nn.Module):
    """A loss whose settings are one dict: the model card shows it, ``repr`` prints it."""

    def get_config_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.get_config_dict().items())


class ContrastiveLoss(_ConfiguredLoss):
    """InfoNCE over each query's positive, its hard negatives and (optionally) every other passage.

    For query i the candidate columns are its own group ``[positive, neg_1, ..., neg_{n-1}]`` and, with
    ``in_batch_negatives``, the passages of every other query (of every rank with ``cross_device``); the
    target is column ``i*n`` (global index). The loss is cross-entropy over ``q @ p.T / temperature``.

    Args:
        temperature: divides cosine / dot similarities (0.02 in NeMo configs; sentence-transformers' MNRL
            scale 20 is 0.05). Must be > 0.
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
            yields the global-batch gradient. Needs ``in_batch_negatives`` to add negatives; without it
            only the scaling applies. Identity outside torch.distributed.

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


class DistillationLoss(_ConfiguredLoss):
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


def train_config_loss(config: str = "llm-embedder") -> dict[str, dict[str, Any]]:
    """The per-task loss settings of ``TASK_CONFIG[config]["training"]``, as :class:`RetrievalObjective` keys.

    ``contrastive_weight``, ``distill_weight``, ``teacher_temperature`` and ``student_temperature`` where a
    task sets them, and ``distill_kind``: ``stable_distill`` when the task's ``stable_distill`` is true, else
    ``kl`` (the seed's two distillation branches). Selection keys are read by
    :func:`densetune.data.groups.train_config_selection`.

    Raises:
        ConfigError: ``config`` is not a TASK_CONFIG entry with a ``training`` table.

    Example:
        >>> train_config_loss()["chat"]
        {'contrastive_weight': 0, 'distill_weight': 1.0, 'teacher_temperature': 0.1, 'distill_kind': 'kl'}
    """
    table = TASK_CONFIG.get(config, {}).get("training")
    if table is None:
        with_training = [name for name, entry in TASK_CONFIG.items() if "training" in entry]
        raise ConfigError(
            "use_train_config",
            f"TASK_CONFIG has no training settings for {config!r}; expected true or one of {', '.join(with_training)}",
        )
    out: dict[str, dict[str, Any]] = {}
    for task, entry in table.items():
        settings = {k: entry[k] for k in TASK_LOSS_KEYS if k in entry}
        settings["distill_kind"] = "stable_distill" if entry.get("stable_distill") else "kl"
        out[task] = settings
    return out


class RetrievalObjective(nn.Module):
    """Weighted sum of a contrastive loss and a distillation loss, with optional per-task settings.

    ``loss = contrastive_weight * contrastive(q, p) + distill_weight * distillation(s, teacher_scores)``
    where ``s`` are the similarities of each query with its own group [B, n] (``stable_distill``: with every
    passage of the batch, as LLM-Embedder, whenever the contrastive loss uses in-batch negatives). The
    distillation term is skipped for a batch without teacher scores (LLM-Embedder mixes tasks with and
    without them); a batch where no term applies is an error.

    Per-task settings apply to batches whose ``task`` matches (batches come from one task with the same-task
    sampler; the collator passes the task): ``contrastive_weight``, ``distill_weight``,
    ``teacher_temperature``, ``student_temperature`` and ``distill_kind`` (one of :data:`DISTILL_KINDS`); a key
    a task leaves out takes the default (the arguments here and the distillation loss's own settings).

    Args:
        contrastive: a :class:`ContrastiveLoss`, or None.
        distillation: a :class:`DistillationLoss`, or None.
        contrastive_weight, distill_weight: default weights (>= 0). LLM-Embedder uses 0.2 and 1.0, but weighs
            a term only when both apply, so with its TASK_CONFIG (one term per task) both act as 1.0.
        task_weights: ``{task: {key: value}}`` with keys :data:`TASK_LOSS_KEYS`.
        use_train_config: ``True`` (= ``"llm-embedder"``) or a TASK_CONFIG name: per-task defaults from
            ``TASK_CONFIG[name]["training"]`` (:func:`train_config_loss`), under ``task_weights`` key by key.

    Inputs: as :class:`ContrastiveLoss` (``in_batch_negatives`` included), plus ``teacher_scores`` [B, n] and
        ``task``.

    Raises:
        ConfigError: an unknown key, a weight < 0, a temperature <= 0, an unknown kind, or a per-task
            distillation setting without a distillation loss; the key is named (``task_weights.chat.x``).

    Under ``contrastive.cross_device`` the distillation term is scaled the same way as the contrastive one.
    Temperatures follow :class:`DistillationLoss`: ``student_temperature`` divides the raw similarity
    (LLM-Embedder's ``cos_temperature * student_temperature``, 0.01 * 1.0 by default).

    Example:
        >>> objective = RetrievalObjective(ContrastiveLoss(0.01), DistillationLoss("kl", 1.0, 0.01),
        ...                                use_train_config=True)
        >>> objective.settings_for("chat")["teacher_temperature"]
        0.1
    """

    def __init__(
        self,
        contrastive: ContrastiveLoss | None = None,
        distillation: DistillationLoss | None = None,
        *,
        contrastive_weight: float = 1.0,
        distill_weight: float = 1.0,
        task_weights: Mapping[str, Mapping[str, Any]] | None = None,
        use_train_config: bool | str = False,
    ):
        super().__init__()
        if contrastive is None and distillation is None:
            raise ValueError("RetrievalObjective needs a contrastive loss, a distillation loss, or both")
        for name, value in (("contrastive_weight", contrastive_weight), ("distill_weight", distill_weight)):
            _check_setting(name, name, value)
        self.contrastive = contrastive
        self.distillation = distillation
        self.contrastive_weight = float(contrastive_weight)
        self.distill_weight = float(distill_weight)
        self.use_train_config = train_config_name(use_train_config)
        self.task_weights = _task_settings(task_weights, self.use_train_config, distillation is not None)
        # One distillation loss per task that changes its temperatures or kind (they hold no parameters).
        self._task_distillation: dict[str, DistillationLoss] = {}
        if distillation is not None:
            for task in self.task_weights:
                settings = self.settings_for(task)
                variant = (
                    settings["distill_kind"],
                    settings["teacher_temperature"],
                    settings["student_temperature"],
                )
                if variant != (
                    distillation.kind,
                    distillation.teacher_temperature,
                    distillation.student_temperature,
                ):
                    self._task_distillation[task] = DistillationLoss(*variant)
        self._warned_no_task = False

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "contrastive": self.contrastive.get_config_dict() if self.contrastive is not None else None,
            "distillation": self.distillation.get_config_dict() if self.distillation is not None else None,
            "contrastive_weight": self.contrastive_weight,
            "distill_weight": self.distill_weight,
            "task_weights": self.task_weights,
            "use_train_config": self.use_train_config,
        }

    def settings_for(self, task: str | None) -> dict[str, Any]:
        """Every setting a batch of ``task`` is trained with: weights, teacher / student temperature and kind."""
        distillation = self.distillation
        defaults: dict[str, Any] = {
            "contrastive_weight": self.contrastive_weight,
            "distill_weight": self.distill_weight,
            "teacher_temperature": distillation.teacher_temperature if distillation is not None else None,
            "student_temperature": distillation.student_temperature if distillation is not None else None,
            "distill_kind": distillation.kind if distillation is not None else None,
        }
        overrides = self.task_weights.get(task, {}) if task is not None else {}
        out = {**defaults, **overrides}
        out["contrastive_weight"] = float(out["contrastive_weight"])
        out["distill_weight"] = float(out["distill_weight"])
        return out

    def weights_for(self, task: str | None) -> tuple[float, float]:
        """(contrastive_weight, distill_weight) for a batch of ``task``."""
        settings = self.settings_for(task)
        return settings["contrastive_weight"], settings["distill_weight"]

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
        if task is None and self.task_weights and not self._warned_no_task:
            self._warned_no_task = True
            logger.warning(
                "RetrievalObjective has per-task settings (%s) but a batch came without a task, so the defaults "
                "apply to it; per-task settings need same-task batches (SameTaskBatchSampler) and a collator "
                "that passes 'task'",
                ", ".join(sorted(self.task_weights)),
            )
        contrastive_weight, distill_weight = self.weights_for(task)
        terms: list[Tensor] = []
        if self.contrastive is not None and contrastive_weight > 0:
            contrastive = self.contrastive(
                q,
                p,
                n_passages=n_passages,
                passage_doc_ids=passage_doc_ids,
                positive_doc_ids=positive_doc_ids,
                in_batch_negatives=in_batch_negatives,
            )
            terms.append(contrastive_weight * contrastive)
        if self.distillation is not None and distill_weight > 0 and teacher_scores is not None:
            distillation = (
                self._task_distillation.get(task, self.distillation)
                if task is not None
                else self.distillation
            )
            cross_device = self.contrastive is not None and self.contrastive.cross_device
            in_batch = False
            if distillation.kind == "stable_distill" and self.contrastive is not None:
                in_batch = (
                    self.contrastive.in_batch_negatives
                    if in_batch_negatives is None
                    else bool(in_batch_negatives)
                )
            with _no_autocast(q.device):
                cols = _columns(
                    q.float(), p.float(), int(n_passages), in_batch=in_batch, cross_device=cross_device
                )
            # Own groups: scores [B, n]; in-batch: [B, P] with each query's group starting at its target column.
            group_start = cols.targets if in_batch else None
            per_query = distillation.per_query(cols.scores, teacher_scores, group_start=group_start)
            terms.append(distill_weight * _reduce(per_query, cross_device))
        if not terms:
            raise ValueError(
                f"no loss term applies to this batch (task={task!r}): distillation needs teacher_scores in the "
                "batch, or give the contrastive loss a weight > 0"
            )
        return torch.stack(terms).sum()


def _task_settings(
    task_weights: Mapping[str, Mapping[str, Any]] | None, train_config: str | None, distills: bool
) -> dict[str, dict[str, Any]]:
    """RetrievalObjective's per-task settings: TASK_CONFIG's (with ``train_config``) under ``task_weights``.

    Raises:
        ConfigError: a malformed entry, an unknown key, a bad value, or a distillation setting given
            explicitly while there is no distillation loss (``distills`` False).
    """
    table: dict[str, dict[str, Any]] = {}
    if train_config is not None:
        # TASK_CONFIG's temperatures and kinds matter only with a distillation loss to apply them to.
        keep = TASK_LOSS_KEYS if distills else ("contrastive_weight", "distill_weight")
        for task, settings in train_config_loss(train_config).items():
            table[task] = {k: v for k, v in settings.items() if k in keep}
    if task_weights is not None and not isinstance(task_weights, Mapping):
        raise ConfigError(
            "task_weights", f"expected a mapping {{task: {{key: value}}}}, got {task_weights!r}"
        )
    for task, settings in (task_weights or {}).items():
        key = f"task_weights.{task}"
        if not isinstance(settings, Mapping):
            raise ConfigError(key, f"expected a mapping of settings, got {settings!r}")
        unknown = sorted(set(settings) - set(TASK_LOSS_KEYS))
        if unknown:
            raise ConfigError(key, f"unknown keys {unknown}; expected some of {', '.join(TASK_LOSS_KEYS)}")
        distill_only = sorted(set(settings) - {"contrastive_weight", "distill_weight"})
        if distill_only and not distills:
            raise ConfigError(
                f"{key}.{distill_only[0]}",
                "applies to the distillation loss, which is not set (loss.distillation)",
            )
        table[str(task)] = {**table.get(str(task), {}), **settings}
    for task, settings in table.items():
        for name, value in settings.items():
            _check_setting(f"task_weights.{task}.{name}", name, value)
    return table


def _check_setting(key: str, name: str, value: Any) -> None:
    """One weight, temperature or kind of RetrievalObjective, or a ConfigError naming ``key``."""
    if name == "distill_kind":
        if value not in DISTILL_KINDS:
            raise ConfigError(key, f"unknown kind {value!r}; expected one of {', '.join(DISTILL_KINDS)}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(key, f"expected a number, got {value!r}")
    if name.endswith("_weight") and value < 0:
        raise ConfigError(key, f"must be >= 0 (0 turns the term off), got {value}")
    if name.endswith("_temperature") and value <= 0:
        raise ConfigError(key, f"must be > 0 (e.g. 0.1 sharpens the teacher, 1.0 leaves it), got {value}")


def loss_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of the embedding losses, read from a collated bi-encoder batch.

    Returns ``n_passages`` (rows of ``d_input_ids`` per row of ``q_input_ids``) and, when present and not
    None, ``passage_doc_ids``, ``positive_doc_ids``, ``teacher_scores``, ``in_batch_negatives`` (a bool
    switching in-batch negatives for this batch) and ``task`` (a string, or a list of one repeated string).

    Raises:
        ValueError: when the passage rows are not a multiple of the query rows, or ``in_batch_negatives`` is
            not a bool.
    """
    n_queries = batch["q_input_ids"].shape[0]
    n_docs = batch["d_input_ids"].shape[0]
    if n_queries == 0 or n_docs % n_queries:
        raise ValueError(f"batch has {n_docs} passage rows for {n_queries} queries: expected a multiple")
    out: dict[str, Any] = {"n_passages": n_docs // n_queries}
    for key in ("passage_doc_ids", "positive_doc_ids", "teacher_scores"):
        if batch.get(key) is not None:
            out[key] = batch[key]
    flag = batch.get("in_batch_negatives")
    if isinstance(flag, Tensor) and flag.dtype == torch.bool and flag.numel() == 1:
        flag = bool(flag)
    if flag is not None:
        if not isinstance(flag, bool):
            raise ValueError(f"batch['in_batch_negatives'] must be True or False, got {flag!r}")
        out["in_batch_negatives"] = flag
    task = batch.get("task")
    if isinstance(task, (list, tuple)) and task and all(t == task[0] for t in task):
        task = task[0]
    if isinstance(task, str):
        out["task"] = task
    return out
