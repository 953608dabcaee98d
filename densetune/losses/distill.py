"""Distillation of teacher scores over each query's group: KL, FlagEmbedding's stable_distill, MarginMSE."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from densetune.losses.scoring import _ConfiguredLoss, _masked_fill_value, _no_autocast

DISTILL_KINDS = ("kl", "stable_distill", "margin_mse")


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
