"""RetrievalObjective: weighted contrastive + distillation terms, with LLM-Embedder's per-task settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from densetune.data.tasks import train_config_name, training_table
from densetune.errors import ConfigError
from densetune.losses.contrastive import ContrastiveLoss
from densetune.losses.distill import DISTILL_KINDS, DistillationLoss
from densetune.losses.scoring import _columns, _no_autocast, _reduce

logger = logging.getLogger("densetune.losses")

# What one task_weights entry may set (RetrievalObjective).
TASK_LOSS_KEYS = (
    "contrastive_weight",
    "distill_weight",
    "teacher_temperature",
    "student_temperature",
    "distill_kind",
)


def train_config_loss(config: str = "llm-embedder") -> dict[str, dict[str, Any]]:
    """The per-task loss settings of ``TASK_CONFIG[config]["training"]``, as :class:`RetrievalObjective` keys.

    ``contrastive_weight``, ``distill_weight``, ``teacher_temperature`` and ``student_temperature`` where a
    task sets them, and ``distill_kind``: ``stable_distill`` when the task's ``stable_distill`` is true, else
    ``kl`` (the seed's two distillation branches). Selection keys are read by
    :func:`densetune.data.tasks.train_config_selection`.

    Raises:
        ConfigError: ``config`` is not a TASK_CONFIG entry with a ``training`` table.

    Example:
        >>> train_config_loss()["chat"]
        {'contrastive_weight': 0, 'distill_weight': 1.0, 'teacher_temperature': 0.1, 'distill_kind': 'kl'}
    """
    out: dict[str, dict[str, Any]] = {}
    for task, entry in training_table(config).items():
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
