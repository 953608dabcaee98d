"""The training dataset: store index -> selected Group with texts, for one epoch. The loop's glue.

``RetrievalTrainDataset(store, selector)`` is a map-style ``torch.utils.data.Dataset``: item ``i`` is the
:class:`~densetune.data.records.Group` the selector picks for example ``i`` in the current epoch
(:meth:`RetrievalTrainDataset.set_epoch`), with document texts resolved from the store's memory-mapped
corpora. Batches of items are resolved together (``__getitems__``: one corpus lookup per batch), which is
what ``DataLoader`` / ``StatefulDataLoader`` call when a batch sampler drives them.

Filtered examples: :meth:`GroupSelector.select` drops an example (returns None) only for reasons that depend
on the example alone, never on the epoch (teacher-score filters, no negatives under an LLM-Embedder mode).
So the dataset finds them once, at construction, and leaves them out of its index: ``len()`` is exact, and
the counts are logged and kept in :attr:`RetrievalTrainDataset.report` (per task in
:attr:`RetrievalTrainDataset.task_report`). The scan runs only when the selector's settings can drop anything.

Capped tasks: a task whose groups exceed the selector's ``max_samples`` for it (LLM-Embedder caps lrlm at
10000) keeps its *last* ``max_samples`` groups, in file order, as the seed does; the rest are left out with a
warning giving the counts, and counted as ``capped``.

Instructions: after document texts are resolved, every group goes through :meth:`GroupSelector.format`
(LLM-Embedder's per-task instructions when the selector has ``instruction``), so any collator sees the final
texts.

The per-item data the batch samplers need comes without decoding documents: :meth:`tasks`, :meth:`lengths`
and :meth:`doc_keys`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from densetune.data.groups import GroupSelector
from densetune.data.records import INLINE_CORPUS_ID, Example, Group, doc_id_to_int64

logger = logging.getLogger("densetune.data")

# Selector outcomes that remove an example for good (epoch-independent).
DROP_REASONS = ("filtered_min", "filtered_margin", "no_negatives")
# Counts of each RetrievalTrainDataset.task_report entry (report has all but "capped", kept in .capped).
TASK_REPORT_KEYS = ("examples", "kept", *DROP_REASONS, "capped")
_SCAN_BATCH = 2048


class RetrievalTrainDataset(Dataset):
    """Groups for training: ``dataset[i]`` is example ``i``'s Group for the current epoch.

    Args:
        store: an :class:`~densetune.data.store.ExampleStore` (``load_examples(paths)``).
        selector: the :class:`~densetune.data.groups.GroupSelector` choosing 1 positive + n-1 negatives.
        exclude: store indices to leave out, counted as ``no_negatives``: rows without negatives that
            ``data.skip_invalid=true`` skips where the selector would stop on them (the training pre-flight
            finds them).

    Attributes:
        epoch: the epoch groups are selected for (set with :meth:`set_epoch`; the loop calls it before each
            epoch, as for the sampler).
        report: ``{"examples": in the store, "kept": in the dataset, "filtered_min", "filtered_margin",
            "no_negatives"}``: what construction left out and why.
        capped: ``{task: groups left out}`` for each task cut to its ``max_samples``; empty when none was.
        task_report: ``{task: {"examples", "kept", "filtered_min", "filtered_margin", "no_negatives",
            "capped"}}``: the same accounting per task.
        indices: store index of each dataset item (an int64 array), or None when nothing was left out.

    Raises:
        ConfigError: a task the selector has no settings or instruction for (see
            :meth:`GroupSelector.check_tasks`).

    Example:
        >>> store = load_examples("train.jsonl")
        >>> dataset = RetrievalTrainDataset(store, GroupSelector(n_passages=8, negative="random"))
        >>> dataset.set_epoch(1)
        >>> group = dataset[0]          # Group(query, docs=[positive, 7 negatives], scores, ...)
    """

    def __init__(self, store: Any, selector: GroupSelector, exclude: Sequence[int] | np.ndarray = ()):
        self.store = store
        self.selector = selector
        self.epoch = 0
        self.indices: np.ndarray | None = None
        tasks = list(store.column("task"))
        selector.check_tasks(tasks)
        keep = np.ones(len(store), dtype=bool)
        reasons: list[str | None] = [None] * len(store)
        for j in np.asarray(exclude, dtype=np.int64).tolist():
            keep[j], reasons[j] = False, "no_negatives"
        if selector.can_drop:
            self._prefilter(keep, reasons)
        self._cap(tasks, keep)
        self._report(tasks, keep, reasons)
        if not keep.all():
            self.indices = np.flatnonzero(keep).astype(np.int64)

    # -- size and items --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.store)

    def set_epoch(self, epoch: int) -> None:
        """Select groups for ``epoch`` from now on (rotating positives, re-drawn negatives)."""
        self.epoch = int(epoch)

    def store_index(self, i: int) -> int:
        """The store index of dataset item ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range (dataset has {len(self)})")
        if i < 0:
            i += len(self)
        return int(self.indices[i]) if self.indices is not None else int(i)

    def __getitem__(self, i: int) -> Group:
        return self.__getitems__([i])[0]

    def __getitems__(self, items: Sequence[int]) -> list[Group]:
        """Groups of several items, their documents resolved together (one lookup per corpus)."""
        chosen: list[tuple[Group, Example]] = []
        for i in items:
            j = self.store_index(int(i))
            example = self.store[j]  # documents by id come without text: select on ids, resolve the chosen
            group = self.selector.select(example, self.epoch, j)
            if group is None:  # cannot happen after _prefilter; a selector changed after construction can
                raise RuntimeError(
                    f"the selector dropped {example.source or example.query_id} (item {i}), which the dataset "
                    "kept at construction; build a new RetrievalTrainDataset after changing the selector"
                )
            chosen.append((group, example))
        return [self.selector.format(group) for group in self._resolve(chosen)]

    def _resolve(self, chosen: list[tuple[Group, Example]]) -> list[Group]:
        # Gather the documents still without text, per corpus, and resolve each corpus' set in one call
        # through store.resolve (it looks ids up in bulk and names the id and record on failure).
        by_corpus: dict[str, list[int]] = defaultdict(list)
        for k, (group, example) in enumerate(chosen):
            if example.corpus_id != INLINE_CORPUS_ID and any(not d.text and d.id for d in group.docs):
                by_corpus[example.corpus_id].append(k)
        groups = [g for g, _ in chosen]
        for corpus_id, members in by_corpus.items():
            docs = [d for k in members for d in groups[k].docs]
            sources = ", ".join(dict.fromkeys(chosen[k][1].source for k in members[:3]))
            carrier = Example(query_id="", query="", positives=docs, corpus_id=corpus_id, source=sources)
            filled = iter(self.store.resolve(carrier).positives)
            for k in members:
                groups[k] = dataclasses.replace(groups[k], docs=[next(filled) for _ in groups[k].docs])
        return groups

    # -- per-item data for the batch samplers (no documents decoded) ----------------------------------

    def _kept(self, values: Sequence[Any] | np.ndarray) -> list | np.ndarray:
        if self.indices is None:
            return values
        if isinstance(values, np.ndarray):
            return values[self.indices]
        return [values[j] for j in self.indices.tolist()]

    def tasks(self) -> list[str]:
        """The task (dataset) name of each item, for :class:`~densetune.data.samplers.SameTaskBatchSampler`."""
        return list(self._kept(self.store.column("task")))

    def lengths(self) -> np.ndarray:
        """Approximate length of each item: its query's characters (int64), for length-bucketed batches."""
        return np.asarray([len(q) for q in self._kept(self.store.column("query"))], dtype=np.int64)

    def doc_keys(self) -> list[list[int]]:
        """Integer keys of each item, for :class:`~densetune.data.samplers.NoDuplicatesBatchSampler`.

        An item's keys are its query (text) and every one of its positives (document id hash,
        :func:`~densetune.data.records.doc_id_to_int64`), so no query or positive appears twice in a global
        batch. Negatives are left out on purpose: a negative shared by two groups is no false negative, and
        a negative equal to another group's positive is masked by the loss through ``passage_doc_ids``;
        keying them would make mined pools (popular documents in many groups) pack badly.
        """
        queries = self._kept(self.store.column("query"))
        positives = self._kept(self.store.column("pos_ids"))
        return [
            [doc_id_to_int64("\x00query\x00" + q)] + [doc_id_to_int64(d) for d in pos if d]
            for q, pos in zip(queries, positives)
        ]

    # -- construction-time filtering and capping -----------------------------------------------------

    def _prefilter(self, keep: np.ndarray, reasons: list[str | None]) -> None:
        """Clear ``keep`` for the examples the selector drops (independent of the epoch), noting why."""
        stats = self.selector.stats
        saved = dict(stats)
        try:
            for start in range(0, len(self.store), _SCAN_BATCH):
                for offset, example in enumerate(self.store.batch(start, start + _SCAN_BATCH)):
                    if not keep[start + offset]:  # excluded by the caller: the selector may not take it
                        continue
                    before = [stats.get(r, 0) for r in DROP_REASONS]
                    if self.selector.select(example, 0, start + offset) is None:
                        keep[start + offset] = False
                        # The one reason whose count the selector just raised.
                        after = [stats.get(r, 0) for r in DROP_REASONS]
                        reasons[start + offset] = next(
                            (r for r, b, a in zip(DROP_REASONS, before, after) if a > b), DROP_REASONS[0]
                        )
        finally:
            stats.clear()
            stats.update(saved)

    def _cap(self, tasks: list[str], keep: np.ndarray) -> None:
        """Keep the last ``max_samples`` groups of each capped task (the seed's ``max_sample_num``)."""
        by_task: dict[str, list[int]] = defaultdict(list)
        for i in np.flatnonzero(keep).tolist():
            by_task[tasks[i]].append(i)
        self.capped: dict[str, int] = {}
        for task, items in by_task.items():
            limit = self.selector.max_samples_for(task)
            if limit is None or len(items) <= limit:
                continue
            cut = items[: len(items) - limit]
            keep[cut] = False
            self.capped[task] = len(cut)
            logger.warning(
                "task %r: kept the last %d of its %d training groups and left out %d (max_samples=%d for this "
                "task, LLM-Embedder's max_sample_num; raise it or set it to null in the selector's settings to "
                "keep them)",
                task,
                limit,
                len(items),
                len(cut),
                limit,
            )

    def _report(self, tasks: list[str], keep: np.ndarray, reasons: list[str | None]) -> None:
        """Fill :attr:`report` and :attr:`task_report`; warn once about what the selection rules dropped."""
        self.task_report: dict[str, dict[str, int]] = {}
        for i, task in enumerate(tasks):
            counts = self.task_report.setdefault(task, dict.fromkeys(TASK_REPORT_KEYS, 0))
            counts["examples"] += 1
            counts["kept"] += int(keep[i])
            if reasons[i] is not None:
                counts[reasons[i]] += 1
        for task, n in self.capped.items():
            self.task_report[task]["capped"] = n
        self.report = {"examples": len(self.store), "kept": int(keep.sum())}
        self.report.update({r: sum(c[r] for c in self.task_report.values()) for r in DROP_REASONS})
        dropped = sum(self.report[r] for r in DROP_REASONS)
        if not dropped:
            return
        reasons_text = ", ".join(f"{r}: {self.report[r]}" for r in DROP_REASONS if self.report[r])
        by_task = ""
        if len(self.task_report) > 1:
            by_task = "; by task: " + ", ".join(
                f"{task}: " + ", ".join(f"{r} {c[r]}" for r in DROP_REASONS if c[r])
                for task, c in sorted(self.task_report.items())
                if any(c[r] for r in DROP_REASONS)
            )
        logger.warning(
            "left out %d of %d training examples (%s)%s; GroupSelector settings decide this "
            "(teacher_scores_min / teacher_scores_margin, or an LLM-Embedder negative mode without negatives), "
            "and data.skip_invalid=true for rows without negatives",
            dropped,
            len(self.store),
            reasons_text,
            by_task,
        )
