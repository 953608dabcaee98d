"""The cross-encoder objective over groups of n rows (listwise CE, BCE, distillation) and one forward+loss step."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densetune.data.batch import PairBatch, as_pair_batch
from densetune.losses.distill import DISTILL_KINDS, DistillationLoss
from densetune.losses.scoring import _ConfiguredLoss


class RerankerLoss(_ConfiguredLoss):
    """The reranker objective over groups of n rows (positive first): listwise CE + BCE + distillation.

    ``loss = listwise_weight * CE(scores.view(B, n) / temperature, target 0)
    + bce_weight * BCE(scores, labels) + distill_weight * DistillationLoss(kind)(scores.view(B, n), teacher)``.

    Args:
        listwise_weight: weight of the cross-entropy over each group with the positive (column 0) as target,
            what NeMo Automodel and FlagEmbedding train rerankers with (>= 0).
        bce_weight: weight of pointwise binary cross-entropy on each row's logit (>= 0); labels are 1 for the
            positive and 0 for the negatives unless the batch gives ``row_labels`` [B*n] (graded labels in
            [0, 1] work too).
        distillation: None, ``"kl"`` or ``"margin_mse"`` (or ``"stable_distill"``): distil teacher scores
            (``teacher_scores`` [B, n], e.g. written by ``densetune score``) with
            :class:`densetune.losses.DistillationLoss`.
        distill_weight: weight of the distillation term (>= 0). A batch without teacher scores skips it (an
            error when it is the only term).
        temperature: divides the scores in the listwise term (> 0).
        teacher_temperature, student_temperature: the distillation temperatures (> 0); 1.0 because reranker
            logits are already on a softmax scale (the bi-encoder default 0.02 is for cosines).

    Inputs:
        scores [B*n] (each query's n rows contiguous, positive first); ``n_passages`` n;
        ``teacher_scores`` [B, n] or [B*n]; ``labels`` [B*n] float for BCE.

    References:
        Nogueira & Cho 2019 (BCE, monoBERT); Gao et al. 2021 (listwise "localised contrastive" CE, used by
        FlagEmbedding); Hofstätter et al. 2020 (MarginMSE); Hinton et al. 2015 (KL).
    """

    def __init__(
        self,
        listwise_weight: float = 1.0,
        bce_weight: float = 0.0,
        distillation: str | None = None,
        distill_weight: float = 1.0,
        temperature: float = 1.0,
        teacher_temperature: float = 1.0,
        student_temperature: float = 1.0,
    ):
        super().__init__()
        for name, value in (
            ("listwise_weight", listwise_weight),
            ("bce_weight", bce_weight),
            ("distill_weight", distill_weight),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if distillation is not None and distillation not in DISTILL_KINDS:
            raise ValueError(
                f"distillation must be None or one of {', '.join(DISTILL_KINDS)}, got {distillation!r}"
            )
        if listwise_weight == 0 and bce_weight == 0 and (distillation is None or distill_weight == 0):
            raise ValueError(
                "every term has weight 0: set listwise_weight, bce_weight or distillation + distill_weight"
            )
        self.listwise_weight = float(listwise_weight)
        self.bce_weight = float(bce_weight)
        self.distill_weight = float(distill_weight)
        self.temperature = float(temperature)
        self.distillation = (
            DistillationLoss(
                distillation, teacher_temperature=teacher_temperature, student_temperature=student_temperature
            )
            if distillation is not None
            else None
        )

    def get_config_dict(self) -> dict[str, Any]:
        """Settings for the model card."""
        return {
            "listwise_weight": self.listwise_weight,
            "bce_weight": self.bce_weight,
            "temperature": self.temperature,
            "distillation": self.distillation.get_config_dict() if self.distillation is not None else None,
            "distill_weight": self.distill_weight,
        }

    def forward(
        self,
        scores: Tensor,
        *,
        n_passages: int,
        teacher_scores: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        n = int(n_passages)
        if n < 1 or scores.dim() != 1 or scores.numel() % n:
            raise ValueError(f"expected scores [B*n] with n_passages={n}, got shape {tuple(scores.shape)}")
        scores = scores.float()
        grouped = scores.view(-1, n)  # [B, n], positive at column 0
        total = scores.new_zeros(())
        if self.listwise_weight:
            target = torch.zeros(grouped.shape[0], dtype=torch.long, device=scores.device)
            total = total + self.listwise_weight * F.cross_entropy(grouped / self.temperature, target)
        if self.bce_weight:
            if labels is None:
                labels = torch.zeros_like(grouped)
                labels[:, 0] = 1.0
            total = total + self.bce_weight * F.binary_cross_entropy_with_logits(
                scores, labels.to(scores.device, torch.float32).reshape(-1)
            )
        if self.distillation is not None and self.distill_weight:
            if teacher_scores is None:
                if not (self.listwise_weight or self.bce_weight):
                    raise ValueError("distillation is the only loss term but the batch has no teacher_scores")
            else:
                teacher = teacher_scores.to(scores.device, torch.float32).reshape(grouped.shape)
                total = total + self.distill_weight * self.distillation(grouped, teacher)
        return total


def _as_loss(loss_cfg: RerankerLoss | Mapping[str, Any] | None) -> RerankerLoss:
    if isinstance(loss_cfg, RerankerLoss):
        return loss_cfg
    cfg = dict(loss_cfg or {})
    cfg.pop("_target_", None)
    valid = set(inspect.signature(RerankerLoss.__init__).parameters) - {"self"}
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise ValueError(f"reranker loss: unknown keys {unknown}; valid keys: {', '.join(sorted(valid))}")
    return RerankerLoss(**cfg)


def loss_step(
    model: nn.Module,
    batch: PairBatch | Mapping[str, Any],
    loss_cfg: RerankerLoss | Mapping[str, Any] | None = None,
) -> Tensor:
    """Forward one collated batch and return the reranker loss (the caller runs backward and the optimizer).

    Args:
        model: a :class:`CrossEncoder` (or a DDP / FSDP wrapper around one: it is called, not inspected).
        batch: from :meth:`CrossEncoder.collate` (``n_passages``) or NeMo's ``CrossEncoderCollator``
            (``labels`` [B] gives B, so n = rows / B); optional ``teacher_scores`` [B, n] and ``row_labels``
            [B*n] (BCE).
        loss_cfg: a :class:`RerankerLoss`, or a dict of its arguments (an optional ``_target_`` is ignored);
            None: listwise cross-entropy only.

    Returns:
        scalar loss (float32) with its graph.

    Example:
        >>> batch = model.collate(groups)
        >>> loss = loss_step(model, batch, {"distillation": "margin_mse", "listwise_weight": 0.0})
        >>> loss.backward(); optimizer.step(); optimizer.zero_grad()
    """
    loss_fn = _as_loss(loss_cfg)
    batch = as_pair_batch(batch)
    n = rows_per_query(batch)
    scores = model(batch)  # [B*n]
    return loss_fn(scores, n_passages=n, teacher_scores=batch.teacher_scores, labels=batch.row_labels)


def rows_per_query(batch: PairBatch | Mapping[str, Any]) -> int:
    """n, the rows of each query's group in a reranker batch: ``n_passages`` (densetune's collator) or
    rows / ``labels.numel()`` (NeMo's CrossEncoderCollator gives one label per query).

    Raises:
        ValueError: the batch gives neither, or its rows do not split into groups of n.
    """
    batch = as_pair_batch(batch)
    rows = int(batch.input_ids.shape[0])
    if batch.n_passages is not None:
        n = int(batch.n_passages)
    elif batch.labels is not None and batch.labels.numel() > 0:
        n = rows // int(batch.labels.numel())
    else:
        raise ValueError(
            "the batch gives neither n_passages nor labels [B]: cannot group its rows into queries"
        )
    if n < 1 or rows % n:
        raise ValueError(f"{rows} rows cannot be split into groups of {n}")
    return n
