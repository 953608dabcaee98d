"""Group selection: turn one Example into one training Group (1 positive + n-1 negatives) for a given epoch.

Selection is a pure function of ``(seed, epoch, index)`` and the Example: every call builds its own
``random.Random`` seeded from a hash of those values (never the global RNG, never Python's salted
``hash()``), so any DataLoader worker, any rank and any resumed run picks the same group for the same item.

Positive modes (``positive=``):

===============  =========================================================================================
mode             positive chosen
===============  =========================================================================================
``first``        ``positives[0]`` (NeMo Automodel default, LLM-Embedder ``first``)
``cycle``        ``positives[epoch % len]`` (NeMo Automodel ``cycle_positive_docs=True``)
``random``       uniform draw, re-drawn every epoch (LLM-Embedder / BGE-EN-ICL ``random``)
``teacher``      argmax of the teacher scores over positives + negatives (first maximum wins, positives
                 first); a winning negative is moved out of the negatives (LLM-Embedder ``teacher``)
``teacher-pos``  argmax of the teacher scores over the positives only (LLM-Embedder ``teacher-pos``)
===============  =========================================================================================

Teacher modes fall back to ``first`` for an Example without teacher scores (counted in
``stats["no_scores"]``).

Negative modes (``negative=``), with k = ``n_passages - 1`` (or ``eval_negative_size`` when set):

===============  =========================================================================================
mode             negatives chosen
===============  =========================================================================================
``cycle``        ``negatives[i % len]`` for i in 0..k-1, file order, wrapping (NeMo Automodel). No
                 negatives while k > 0 is a :class:`~densetune.errors.DataError`.
``pool``         a permutation of the negatives fixed per (seed, index); epoch e takes positions
                 ``[e*k, (e+1)*k)`` of it, wrapping, so a large mined pool (say 50 negatives, 7 per group)
                 is used completely before any negative repeats. No negatives while k > 0 is a DataError.
``first``        the first k (LLM-Embedder ``first``)
``random``       k sampled without replacement, re-drawn every epoch (LLM-Embedder / BGE-EN-ICL default)
``teacher+``     the k highest teacher scores (LLM-Embedder ``teacher+``)
``teacher-``     the k lowest teacher scores (LLM-Embedder ``teacher-``)
===============  =========================================================================================

For ``first``, ``random``, ``teacher+`` and ``teacher-`` (the LLM-Embedder rules, FlagEmbedding
``get_train_process_fn``): an Example left with no negatives is dropped (``select`` returns None, counted in
``stats["no_negatives"]``); fewer than k negatives are tiled (the list repeated until it has at least k
entries, scores alongside) before choosing. ``teacher+`` / ``teacher-`` without scores sample at random, as
the seed does (counted in ``stats["no_scores"]``). Any mode that has to repeat negatives counts the Example in
``stats["wrapped"]`` and logs one warning per corpus.

Teacher scores (LLM-Embedder semantics, applied before any choice when the Example has scores):
``teacher_scores_min`` drops the Example when ``max(scores) < teacher_scores_min``
(``stats["filtered_min"]``); ``teacher_scores_margin`` drops it when
``max(scores) - min(scores) < teacher_scores_margin`` (``stats["filtered_margin"]``). ``stable_distill`` sorts
the chosen negatives by teacher score, highest first (stable for ties). ``Group.scores`` is aligned with
``Group.docs`` (positive first), or None without scores.

LLM-Embedder history rows (``Example.history`` non-empty) have no positives: the history documents are the
candidates (as negatives) and their teacher scores (``pos_scores + neg_scores``, aligned with ``history``)
decide; they need ``positive="teacher"``.

Differences from the seeds, on purpose:

- A negative that is the same document as a positive of the Example (same id, or same text when ids are
  empty) is removed before choosing, as are further copies of a negative the teacher promoted to positive
  (``stats["positive_in_negatives"]``): training against a copy of the positive only teaches noise. With
  clean data this changes nothing.
- ``n_passages=1`` (no negatives wanted) never drops an Example for lacking negatives; the LLM-Embedder seed
  drops it anyway.
- Bad records raise :class:`~densetune.errors.DataError` naming the record instead of ``assert``/KeyError.

Per-task settings (LLM-Embedder's ``use_train_config``; see docs/multitask.md): one selector can apply other
modes to each task (``Example.task``, the parent directory of an LLM-Embedder file). ``task_settings`` gives
them explicitly, ``{task: {positive, negative, teacher_scores_min, teacher_scores_margin, stable_distill,
max_samples}}``; ``use_train_config=True`` takes them from ``TASK_CONFIG["llm-embedder"]["training"]``
(explicit ``task_settings`` entries win, key by key). A key a task does not set falls back to the selector's
own argument; ``n_passages`` and ``seed`` are shared. ``max_samples`` caps a task's groups; the cap is
applied, and every capped group counted and logged, by :class:`~densetune.data.dataset.RetrievalTrainDataset`.
``instruction="llm-embedder"`` names the instruction set of the task layer of the training prompt: the
selector only carries the name (a recipe's selector section names its tasks' instructions next to their
settings); :class:`~densetune.data.prompts.Prompt` applies it, in the dataset once document texts are resolved.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from densetune.data.prompts import Prompt
from densetune.data.records import Doc, Example, Group
from densetune.data.seeds import derive_seed
from densetune.data.tasks import task_settings_table, train_config_name
from densetune.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

POSITIVE_MODES = ("first", "cycle", "random", "teacher", "teacher-pos")
NEGATIVE_MODES = ("cycle", "pool", "first", "random", "teacher+", "teacher-")
# Modes whose rules come from NeMo Automodel: a record without negatives is a data error there, and errors
# name NeMo's fields. The other modes follow LLM-Embedder, which drops such rows.
_NEMO_NEGATIVE_MODES = ("cycle", "pool")

STAT_KEYS = (
    "selected",
    "filtered_min",
    "filtered_margin",
    "no_negatives",
    "wrapped",
    "no_scores",
    "positive_in_negatives",
)


class GroupSelector:
    """Builds the training group of one Example for one epoch; see the module docstring for every mode.

    Args:
        n_passages: documents per group, 1 positive + ``n_passages - 1`` negatives (NeMo ``n_passages``,
            FlagEmbedding ``train_group_size``); 4 by default, as the recipe.
        positive: ``first`` | ``cycle`` | ``random`` | ``teacher`` | ``teacher-pos``.
        negative: ``cycle`` | ``pool`` | ``first`` | ``random`` | ``teacher+`` | ``teacher-``.
        teacher_scores_min: drop Examples whose best teacher score is below this (None: keep all).
        teacher_scores_margin: drop Examples whose teacher scores span less than this (None: keep all).
        stable_distill: sort the chosen negatives by teacher score, highest first.
        seed: base seed of every random choice.
        eval_negative_size: negatives per group for evaluation (NeMo ``eval_negative_size``); when set it
            replaces ``n_passages - 1``. Set it only on the selector used for evaluation.
        max_samples: keep at most this many groups of each task (the last ones, as LLM-Embedder's
            ``max_sample_num``); None keeps all. Applied and reported by the training dataset.
        task_settings: per-task overrides, ``{task: {key: value}}`` with keys
            :data:`~densetune.data.tasks.TASK_SETTING_KEYS`; a key a task leaves out takes the selector's own
            argument.
        use_train_config: ``True`` (= ``"llm-embedder"``) or a TASK_CONFIG name: take each task's settings
            from ``TASK_CONFIG[name]["training"]`` (:func:`~densetune.data.tasks.train_config_selection`), under
            ``task_settings``.
            A task with no entry in either is then an error rather than silently trained with the defaults.
        instruction: a TASK_CONFIG name (``"llm-embedder"``, ``"bge"``, ``"e5"``, ``"instructor"``) whose
            per-task query / key instructions the training prompt prepends (``Prompt(instruction=...)``, which
            the dataset builds from this by default); None adds none. Carried, not applied, here.

    Attributes:
        stats: counts per outcome, keys :data:`STAT_KEYS`: ``selected``, ``filtered_min``,
            ``filtered_margin``, ``no_negatives`` (dropped), ``wrapped`` (negatives repeated), ``no_scores``
            (a teacher option found no scores and fell back), ``positive_in_negatives`` (copies removed).
            Per process: sum them over DataLoader workers for a full report.
        num_negatives: negatives per group (k).

    Raises:
        ConfigError: an unknown mode or an out-of-range value, naming the key (``task_settings.chat.positive``
            for a per-task one) and the valid values.

    Example:
        >>> from densetune.data.records import Doc, Example
        >>> ex = Example("q1", "what is bm25", [Doc("d1", "BM25")], [Doc("d2", "TF-IDF"), Doc("d3", "LSI")])
        >>> group = GroupSelector(n_passages=3, negative="cycle").select(ex, epoch=0, index=0)
        >>> [d.id for d in group.docs]
        ['d1', 'd2', 'd3']
        >>> multi = GroupSelector(8, use_train_config=True, instruction="llm-embedder")  # LLM-Embedder recipe
        >>> multi.settings_for("chat")["positive"]
        'teacher'
    """

    def __init__(
        self,
        n_passages: int = 4,
        positive: str = "first",
        negative: str = "random",
        *,
        teacher_scores_min: float | None = None,
        teacher_scores_margin: float | None = None,
        stable_distill: bool = False,
        seed: int = 42,
        eval_negative_size: int | None = None,
        max_samples: int | None = None,
        task_settings: Mapping[str, Mapping[str, Any]] | None = None,
        use_train_config: bool | str = False,
        instruction: str | None = None,
    ):
        if not _is_int(n_passages) or n_passages < 1:
            raise ConfigError(
                "n_passages", f"expected an integer >= 1 (1 positive + n-1 negatives), got {n_passages!r}"
            )
        if positive not in POSITIVE_MODES:
            raise ConfigError("positive", f"unknown mode {positive!r}; valid: {', '.join(POSITIVE_MODES)}")
        if negative not in NEGATIVE_MODES:
            raise ConfigError(
                "negative",
                f"unknown mode {negative!r}; valid: {', '.join(NEGATIVE_MODES)} "
                "(cycle = NeMo Automodel file order, random = FlagEmbedding default)",
            )
        for key, value in (
            ("teacher_scores_min", teacher_scores_min),
            ("teacher_scores_margin", teacher_scores_margin),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(key, f"expected a number or null, got {value!r}")
        if teacher_scores_margin is not None and teacher_scores_margin < 0:
            raise ConfigError(
                "teacher_scores_margin",
                f"expected >= 0 (max - min of the scores), got {teacher_scores_margin}",
            )
        if not isinstance(stable_distill, bool):
            raise ConfigError("stable_distill", f"expected true or false, got {stable_distill!r}")
        if max_samples is not None and (not _is_int(max_samples) or max_samples < 1):
            raise ConfigError("max_samples", f"expected an integer >= 1 or null, got {max_samples!r}")
        if not _is_int(seed):
            raise ConfigError("seed", f"expected an integer, got {seed!r}")
        if eval_negative_size is not None and (not _is_int(eval_negative_size) or eval_negative_size < 0):
            raise ConfigError(
                "eval_negative_size", f"expected an integer >= 0 or null, got {eval_negative_size!r}"
            )

        self.n_passages = n_passages
        self.positive = positive
        self.negative = negative
        self.teacher_scores_min = teacher_scores_min
        self.teacher_scores_margin = teacher_scores_margin
        self.stable_distill = bool(stable_distill)
        self.seed = seed
        self.eval_negative_size = eval_negative_size
        self.num_negatives = eval_negative_size if eval_negative_size is not None else n_passages - 1
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._warned_corpora: set[str] = set()
        nemo = negative in _NEMO_NEGATIVE_MODES
        self._pos_field, self._neg_field = ("pos_doc", "neg_doc") if nemo else ("pos", "neg")
        self._uses_scores = (
            positive in ("teacher", "teacher-pos")
            or negative in ("teacher+", "teacher-")
            or stable_distill
            or teacher_scores_min is not None
            or teacher_scores_margin is not None
        )
        self.max_samples = max_samples
        self.instruction = Prompt(instruction=instruction).instruction  # checked where it is applied
        self.use_train_config = train_config_name(use_train_config)
        # One plain selector per task with its own settings; they count into this selector's stats.
        self._task_selectors: dict[str, GroupSelector] = {}
        self._task_max_samples: dict[str, int | None] = {}
        # The keys each task sets in task_settings: an error names task_settings or use_train_config by them.
        table, self._explicit = task_settings_table(task_settings, self.use_train_config)
        for task, settings in table.items():
            self._add_task(task, settings)

    @property
    def group_size(self) -> int:
        """Documents per group: 1 + :attr:`num_negatives`."""
        return 1 + self.num_negatives

    # -- per-task settings ------------------------------------------------------------------------

    def _own_settings(self) -> dict[str, Any]:
        return {
            "positive": self.positive,
            "negative": self.negative,
            "teacher_scores_min": self.teacher_scores_min,
            "teacher_scores_margin": self.teacher_scores_margin,
            "stable_distill": self.stable_distill,
            "max_samples": self.max_samples,
        }

    def _add_task(self, task: str, settings: Mapping[str, Any]) -> None:
        merged = {**self._own_settings(), **settings}
        max_samples = merged.pop("max_samples")
        try:
            selector = GroupSelector(
                self.n_passages,
                seed=self.seed,
                eval_negative_size=self.eval_negative_size,
                max_samples=max_samples,
                **merged,
            )
        except ConfigError as err:
            explicit = err.key in self._explicit.get(task, ()) or self.use_train_config is None
            origin = "task_settings" if explicit else f"use_train_config ({self.use_train_config})"
            raise ConfigError(f"{origin}.{task}.{err.key}", err.message) from None
        selector.stats = self.stats  # the same dict: the dataset resets and reads it in place
        self._task_selectors[task] = selector
        self._task_max_samples[task] = max_samples

    def _selector_for(self, task: str) -> GroupSelector:
        selector = self._task_selectors.get(task)
        if selector is not None:
            return selector
        if self.use_train_config is not None:
            raise ConfigError(
                "use_train_config",
                f"TASK_CONFIG[{self.use_train_config!r}] has no training settings for task {task!r} (known: "
                f"{', '.join(sorted(self._task_selectors))}); add task_settings.{task} (may be {{}}) to train "
                "it with the selector's own settings",
            )
        return self

    def settings_for(self, task: str) -> dict[str, Any]:
        """The selection settings ``task`` is trained with (:data:`~densetune.data.tasks.TASK_SETTING_KEYS`).

        Raises:
            ConfigError: with ``use_train_config``, a task that has no settings anywhere.
        """
        return self._selector_for(task)._own_settings()

    def check_tasks(self, tasks: Iterable[str]) -> None:
        """Fail before training when a task has no settings (``use_train_config``).

        Raises:
            ConfigError: naming the task, the known ones, and the fix.
        """
        for task in sorted(set(tasks)):
            self._selector_for(task)

    @property
    def can_drop(self) -> bool:
        """Whether :meth:`select` can drop an Example under some task's settings (no negatives or a teacher
        filter), so a dataset must scan its Examples once to know its size."""
        return any(s._drops() for s in (self, *self._task_selectors.values()))

    def drop_key(self) -> str:
        """The settings :meth:`select`'s drop decisions depend on, as canonical JSON (every task's negative
        mode, negative count, positive mode and teacher filters): a dataset keeps its prefilter result under
        a hash of it, so another recipe with the same key reuses the result and any other setting rebuilds it."""

        def one(s: GroupSelector) -> dict[str, Any]:
            return {
                "positive": s.positive,
                "negative": s.negative,
                "num_negatives": s.num_negatives,
                "teacher_scores_min": s.teacher_scores_min,
                "teacher_scores_margin": s.teacher_scores_margin,
            }

        tasks = {t: one(s) for t, s in sorted(self._task_selectors.items())}
        return json.dumps({"default": one(self), "tasks": tasks}, sort_keys=True)

    def _drops(self) -> bool:
        empty_drops = self.negative not in _NEMO_NEGATIVE_MODES and self.num_negatives > 0
        return empty_drops or self.teacher_scores_min is not None or self.teacher_scores_margin is not None

    def max_samples_for(self, task: str) -> int | None:
        """The most groups of ``task`` to keep (``max_samples`` of the task, else the selector's), or None."""
        return self._task_max_samples.get(task, self.max_samples)

    def select(self, example: Example, epoch: int, index: int) -> Group | None:
        """The group of ``example`` (item ``index`` of its dataset) for ``epoch``, or None when filtered out.

        Args:
            example: the record, document texts already resolved.
            epoch: 0-based epoch; modes that rotate (cycle positive, random, pool) change with it.
            index: the Example's position in its dataset; seeds the per-item randomness.

        Returns:
            A :class:`Group` with ``docs = [positive, negative_1, ...]`` (``group_size`` documents), or None
            when the Example is filtered by teacher scores or has no negatives under an LLM-Embedder mode
            (the reason is counted in :attr:`stats`).

        Raises:
            DataError: no positive to choose, no negatives under ``cycle``/``pool``, or teacher scores that
                do not match the documents; the message names ``example.source`` and the field.
        """
        selector = self._selector_for(example.task) if self._task_selectors else self
        if selector is not self:
            return selector.select(example, epoch, index)
        rng = random.Random(derive_seed(self.seed, "select", epoch, index))
        if example.history:
            positives: list[Doc] = []
            negatives = list(example.history)
        else:
            positives = list(example.positives)
            negatives = list(example.negatives)
        scores = self._teacher_scores(example, len(positives), len(negatives))
        if scores is None and self._uses_scores:
            self.stats["no_scores"] += 1

        if scores:
            best = max(scores)
            if self.teacher_scores_min is not None and best < self.teacher_scores_min:
                self.stats["filtered_min"] += 1
                return None
            if self.teacher_scores_margin is not None and best - min(scores) < self.teacher_scores_margin:
                self.stats["filtered_margin"] += 1
                return None

        pos_scores = scores[: len(positives)] if scores is not None else None
        neg_scores = scores[len(positives) :] if scores is not None else None
        # Before choosing, so a copy of a positive can neither win the teacher's argmax as a "negative" nor
        # be drawn as one; after, because a promoted negative may have copies of its own.
        negatives, neg_scores, removed = _drop_copies(positives, negatives, neg_scores)
        positive, pos_score = self._choose_positive(
            example, positives, negatives, pos_scores, neg_scores, epoch, rng
        )
        negatives, neg_scores, removed_after = _drop_copies([positive], negatives, neg_scores)
        if removed or removed_after:
            self.stats["positive_in_negatives"] += 1
        chosen = self._choose_negatives(example, negatives, neg_scores, epoch, index, rng)
        if chosen is None:
            return None
        if self.stable_distill and neg_scores is not None:
            # sorted() is stable, so equal scores keep their chosen order (the seed sorts the same way).
            chosen = sorted(chosen, key=lambda i: neg_scores[i], reverse=True)

        self.stats["selected"] += 1
        docs = [positive] + [negatives[i] for i in chosen]
        group_scores = None
        if pos_score is not None and neg_scores is not None:
            group_scores = [pos_score] + [neg_scores[i] for i in chosen]
        return Group(
            query=example.query,
            query_id=example.query_id,
            docs=docs,
            scores=group_scores,
            task=example.task,
            type=example.type,
            prompt=example.prompt,
            category=example.category,
            query_instruction=example.query_instruction,
            passage_instruction=example.passage_instruction,
        )

    # -- the steps of select(), in order ------------------------------------------------------------

    def _teacher_scores(self, example: Example, n_pos: int, n_neg: int) -> list[float] | None:
        """Teacher scores aligned with ``positives + negatives`` (history rows: with ``history``), or None."""
        if example.pos_scores is None and example.neg_scores is None:
            return None
        if example.history:
            # LLM-Embedder's teacher_scores are aligned with history; accept them split either way.
            scores = list(example.pos_scores or []) + list(example.neg_scores or [])
            if len(scores) != n_neg:
                raise DataError(
                    f"{len(scores)} teacher scores for {n_neg} history documents; expected one score per "
                    "history entry",
                    path=example.source or example.query_id,
                    field="teacher_scores",
                )
            return [float(s) for s in scores]
        for field_name, values, count, docs_field in (
            ("pos_scores", example.pos_scores, n_pos, self._pos_field),
            ("neg_scores", example.neg_scores, n_neg, self._neg_field),
        ):
            # A missing list is fine only when there is nothing to score (e.g. neg_scores for no negatives).
            if (values is None and count > 0) or (values is not None and len(values) != count):
                got = "none" if values is None else str(len(values))
                raise DataError(
                    f"{got} teacher scores for {count} documents in {docs_field}; "
                    "give one score per document or no scores at all",
                    path=example.source or example.query_id,
                    field=field_name,
                )
        return [float(s) for s in (example.pos_scores or [])] + [float(s) for s in (example.neg_scores or [])]

    def _choose_positive(
        self,
        example: Example,
        positives: list[Doc],
        negatives: list[Doc],
        pos_scores: list[float] | None,
        neg_scores: list[float] | None,
        epoch: int,
        rng: random.Random,
    ) -> tuple[Doc, float | None]:
        """The positive and its teacher score; a teacher-chosen negative is popped out of ``negatives``."""
        mode = self.positive
        if mode in ("teacher", "teacher-pos") and pos_scores is None:
            mode = "first"
        if (
            mode == "teacher"
            and pos_scores is not None
            and neg_scores is not None
            and (positives or negatives)
        ):
            everything = pos_scores + neg_scores
            # max() keeps the first maximum, so ties go to positives, as in the seed.
            best = max(range(len(everything)), key=everything.__getitem__)
            if best < len(positives):
                return positives[best], pos_scores[best]
            j = best - len(positives)
            return negatives.pop(j), neg_scores.pop(j)

        if not positives:
            hint = (
                "history rows have no positives: they need teacher scores and positive='teacher'"
                if example.history
                else "expected at least one positive document"
            )
            raise DataError(
                f"no positive to choose with positive={self.positive!r}; {hint}",
                path=example.source or example.query_id,
                field=self._pos_field,
            )
        if mode == "teacher-pos":
            assert pos_scores is not None
            best = max(range(len(positives)), key=pos_scores.__getitem__)
        elif mode == "cycle":
            best = epoch % len(positives)
        elif mode == "random":
            best = rng.randrange(len(positives))
        else:
            best = 0
        return positives[best], (pos_scores[best] if pos_scores is not None else None)

    def _choose_negatives(
        self,
        example: Example,
        negatives: list[Doc],
        neg_scores: list[float] | None,
        epoch: int,
        index: int,
        rng: random.Random,
    ) -> list[int] | None:
        """Indices into ``negatives`` (possibly repeated), or None to drop the Example.

        For the tiling modes the indices address the tiled list; they are folded back (``% len``) so callers
        index the original list, which is equivalent because tiling repeats it verbatim.
        """
        k = self.num_negatives
        if k == 0:
            return []
        n = len(negatives)
        if n == 0:
            if self.negative in _NEMO_NEGATIVE_MODES:
                raise DataError(
                    f"no negatives but each group needs {k} (n_passages={self.n_passages}); "
                    "add hard negatives or set n_passages=1",
                    path=example.source or example.query_id,
                    field=self._neg_field,
                )
            self.stats["no_negatives"] += 1
            return None
        if n < k:
            self._note_wrap(example, n, k)

        if self.negative == "cycle":
            return [i % n for i in range(k)]
        if self.negative == "pool":
            # The permutation ignores the epoch, so consecutive epochs read consecutive windows of one order.
            order = random.Random(derive_seed(self.seed, "pool", index)).sample(range(n), n)
            return [order[(epoch * k + j) % n] for j in range(k)]

        tiled = n * math.ceil(k / n)
        mode = self.negative
        if mode in ("teacher+", "teacher-") and neg_scores is None:
            mode = "random"
        if mode in ("teacher+", "teacher-"):
            assert neg_scores is not None
            # Stable sort over the tiled list, as the seed does: ties keep file order, copies stay adjacent.
            ranked = sorted(range(tiled), key=lambda i: neg_scores[i % n], reverse=mode == "teacher+")
            return [i % n for i in ranked[:k]]
        if mode == "first":
            return [i % n for i in range(k)]
        return [i % n for i in rng.sample(range(tiled), k)]

    def _note_wrap(self, example: Example, have: int, need: int) -> None:
        self.stats["wrapped"] += 1
        corpus = example.corpus_id
        if corpus in self._warned_corpora:
            return
        self._warned_corpora.add(corpus)
        logger.warning(
            "corpus %r: %s has %d negative(s) but each group needs %d, so negatives repeat; further such "
            "examples in this corpus are counted in GroupSelector.stats['wrapped'] without more warnings",
            corpus,
            example.source or example.query_id,
            have,
            need,
        )


def _drop_copies(
    positives: Sequence[Doc], negatives: list[Doc], neg_scores: list[float] | None
) -> tuple[list[Doc], list[float] | None, bool]:
    """Negatives and their scores without the documents of ``positives`` (same id, or same text if no id)."""
    positive_keys = {_doc_key(doc) for doc in positives}
    keep = [i for i, doc in enumerate(negatives) if _doc_key(doc) not in positive_keys]
    if len(keep) == len(negatives):
        return negatives, neg_scores, False
    kept_scores = None if neg_scores is None else [neg_scores[i] for i in keep]
    return [negatives[i] for i in keep], kept_scores, True


def _doc_key(doc: Doc) -> tuple[str, str]:
    return ("id", doc.id) if doc.id else ("text", doc.text)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
