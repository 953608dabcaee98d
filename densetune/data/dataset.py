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
:attr:`RetrievalTrainDataset.task_report`). The scan runs only when the selector's settings can drop anything,
and only once per input and drop settings: its result (one byte per example) is kept in the input's store
entry, so a start from a built cache decodes no example (10M examples: a 10 MB read, not a full pass). The
scan itself runs in ranges of 65,536 examples by one worker process per CPU, with a progress bar.

Capped tasks: a task whose groups exceed the selector's ``max_samples`` for it (LLM-Embedder caps lrlm at
10000) keeps its *last* ``max_samples`` groups, in file order, as the seed does; the rest are left out with a
warning giving the counts, and counted as ``capped``.

Instructions: after document texts are resolved, every group goes through the task layer of the training
prompt (:meth:`densetune.data.prompts.Prompt.instruct`: LLM-Embedder's per-task instructions when the prompt
has an ``instruction`` set), so any collator sees texts with their task instructions; the prompt's model
layer (prefixes) is the collator's, from the same object.

The per-item data the batch samplers need comes without decoding documents: :meth:`tasks`, :meth:`lengths`
and :meth:`doc_keys`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import multiprocessing
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from densetune.data.groups import GroupSelector
from densetune.data.progress import data_bar
from densetune.data.prompts import Prompt
from densetune.data.records import INLINE_CORPUS_ID, Example, Group, doc_id_to_int64
from densetune.data.store import data_workers, gc_paused

logger = logging.getLogger("densetune.data")

# Selector outcomes that remove an example for good (epoch-independent).
DROP_REASONS = ("filtered_min", "filtered_margin", "no_negatives")
# Counts of each RetrievalTrainDataset.task_report entry (report has all but "capped", kept in .capped).
TASK_REPORT_KEYS = ("examples", "kept", *DROP_REASONS, "capped")
_SCAN_BATCH = 2048
# Examples read between two store.release_pages() calls: bounds the cache pages a pass keeps mapped. Each
# random document read maps up to 64 KB around it (the kernel's fault-around, clean page-cache pages), so
# the bound is min(cache size, ~2K examples x their documents x 64 KB); a re-map costs about a millisecond.
# (16K let a scan worker over a 1M-example cache with recurring negatives hold ~950 MB of it, measured.)
_RELEASE_EVERY = 1 << 11
# Part of the prefilter cache key: bump it when what select() drops for the same settings changes.
_PREFILTER_VERSION = 1


# Examples one prefilter scan task decodes (a worker process's share at a time).
_SCAN_RANGE = 1 << 16
# What forked scan workers read (inherited at fork, never pickled): (dataset, excluded rows).
_scanning: tuple[RetrievalTrainDataset, np.ndarray] | None = None


def _scan_range(first: int, stop: int) -> np.ndarray:
    """A scan worker's task: the drop codes of examples ``first:stop`` (see ``_scan_in_parallel``)."""
    assert _scanning is not None, "a scan task runs in a worker forked by _scan_in_parallel"
    dataset, excluded = _scanning
    return dataset._scan(first, stop, excluded)


def _save_quietly(path: Path, codes: np.ndarray) -> None:
    """Write ``codes`` to ``path`` atomically; a cache directory we cannot write to only costs a rescan."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.save(f, codes, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as err:
        logger.debug("could not keep the prefilter result in %s: %s", path, err)


class RetrievalTrainDataset(Dataset):
    """Groups for training: ``dataset[i]`` is example ``i``'s Group for the current epoch.

    Args:
        store: an :class:`~densetune.data.store.ExampleStore` (``load_examples(paths)``).
        selector: the :class:`~densetune.data.groups.GroupSelector` choosing 1 positive + n-1 negatives.
        exclude: store indices to leave out, counted as ``no_negatives``: rows without negatives that
            ``data.skip_invalid=true`` skips where the selector would stop on them (the training pre-flight
            finds them).
        prompt: the training :class:`~densetune.data.prompts.Prompt` whose task layer applies (the recipe
            hands the one its collator uses); None: ``Prompt(instruction=selector.instruction)``.

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
        ConfigError: a task the selector has no settings for, or the prompt no instruction for (see
            :meth:`GroupSelector.check_tasks`, :meth:`Prompt.check_tasks`).

    Example:
        >>> store = load_examples("train.jsonl")
        >>> dataset = RetrievalTrainDataset(store, GroupSelector(n_passages=8, negative="random"))
        >>> dataset.set_epoch(1)
        >>> group = dataset[0]          # Group(query, docs=[positive, 7 negatives], scores, ...)
    """

    def __init__(
        self,
        store: Any,
        selector: GroupSelector,
        exclude: Sequence[int] | np.ndarray = (),
        *,
        prompt: Prompt | None = None,
    ):
        self.store = store
        self.selector = selector
        self.prompt = prompt if prompt is not None else Prompt(instruction=selector.instruction)
        self.epoch = 0
        self._read = 0  # examples read since the store's pages were last released
        self.indices: np.ndarray | None = None
        codes, names = store.task_codes()
        selector.check_tasks(names)
        self.prompt.check_tasks(names)
        # reasons[i]: 0 kept, k > 0 left out for DROP_REASONS[k - 1] (int8: 10M examples cost 10 MB)
        excluded = np.zeros(len(store), dtype=bool)
        excluded[np.asarray(exclude, dtype=np.int64)] = True
        reasons = self._prefilter(excluded) if selector.can_drop else np.zeros(len(store), dtype=np.int8)
        reasons[excluded] = DROP_REASONS.index("no_negatives") + 1
        keep = reasons == 0
        self._cap(codes, names, keep)
        self._report(codes, names, keep, reasons)
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
        self._count_read(len(items))
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
        return [self.prompt.instruct(group) for group in self._resolve(chosen)]

    def _count_read(self, n: int) -> None:
        """Release the store's mapped pages every :data:`_RELEASE_EVERY` examples read (page cache bounded by
        what was read lately, not by the cache's size)."""
        self._read += n
        if self._read >= _RELEASE_EVERY and hasattr(self.store, "release_pages"):
            self.store.release_pages()
            self._read = 0

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

    def _prefilter(self, excluded: np.ndarray) -> np.ndarray:
        """The drop reason code of every example (0: kept), epoch-independent.

        Computed once per input and selector drop settings (:meth:`GroupSelector.drop_key`) and kept next to
        the input's cache entry (``prefilter-<hash>.npy``), so a start from a built cache reads N bytes
        instead of decoding every example; a read-only or missing cache directory only costs the scan.
        Rows in ``excluded`` are not shown to the selector (it may stop on them); a range holding any is
        scanned each time rather than cached.
        """
        key = hashlib.sha256(f"{_PREFILTER_VERSION}\n{self.selector.drop_key()}".encode()).hexdigest()[:16]
        out = np.zeros(len(self.store), dtype=np.int8)
        for entry, start, stop in self.store.entries():
            cached = Path(entry) / f"prefilter-{key}.npy"
            codes = None
            if cached.is_file():
                try:
                    codes = np.load(cached, allow_pickle=False)
                except (OSError, ValueError):
                    codes = None
                if codes is not None and codes.shape != (stop - start,):
                    codes = None
            if codes is None:
                codes = self._scan_in_parallel(start, stop, excluded)
                if not excluded[start:stop].any():
                    _save_quietly(cached, codes)
            out[start:stop] = codes
        return out

    def _scan_in_parallel(self, start: int, stop: int, excluded: np.ndarray) -> np.ndarray:
        """:meth:`_scan` of ``start:stop`` in ranges of :data:`_SCAN_RANGE` examples, by one forked process
        per CPU (:func:`~densetune.data.store.data_workers`) when there are several ranges, with a progress
        bar. Each example's code depends on it alone (and its index), so the result is the one-process one."""
        global _scanning
        workers = data_workers()
        firsts = list(range(start, stop, _SCAN_RANGE))
        bar = data_bar("prefilter", total=stop - start)
        try:
            if workers <= 1 or len(firsts) < 2 or sys.platform != "linux":
                return self._scan(start, stop, excluded, bar)
            # Forked workers inherit the dataset and `excluded` (nothing pickled); a worker's selector is a
            # copy, so a warning it gives once may come once per worker.
            _scanning = (self, excluded)
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                stops = [min(first + _SCAN_RANGE, stop) for first in firsts]
                parts = []
                for part in pool.map(_scan_range, firsts, stops):
                    parts.append(part)
                    bar.update(len(part))
            return np.concatenate(parts)
        finally:
            _scanning = None
            bar.close()

    def _scan(self, start: int, stop: int, excluded: np.ndarray, bar: Any = None) -> np.ndarray:
        """Decode examples ``start:stop`` and run the selector on each: their drop reason codes."""
        stats = self.selector.stats
        saved = dict(stats)
        codes = np.zeros(stop - start, dtype=np.int8)
        try:
            with gc_paused():  # decoding makes many objects, freed by reference counting
                for first in range(start, stop, _SCAN_BATCH):
                    self._count_read(min(_SCAN_BATCH, stop - first))
                    for offset, example in enumerate(self.store.batch(first, min(first + _SCAN_BATCH, stop))):
                        if excluded[first + offset]:  # left out by the caller: the selector may not take it
                            continue
                        before = [stats.get(r, 0) for r in DROP_REASONS]
                        if self.selector.select(example, 0, first + offset) is None:
                            # The one reason whose count the selector just raised.
                            after = [stats.get(r, 0) for r in DROP_REASONS]
                            hit = next((k for k, (b, a) in enumerate(zip(before, after)) if a > b), 0)
                            codes[first + offset - start] = hit + 1
                    if bar is not None:
                        bar.update(min(_SCAN_BATCH, stop - first))
        finally:
            stats.clear()
            stats.update(saved)
        return codes

    def _cap(self, codes: np.ndarray, names: list[str], keep: np.ndarray) -> None:
        """Keep the last ``max_samples`` groups of each capped task (the seed's ``max_sample_num``)."""
        self.capped: dict[str, int] = {}
        for c, task in enumerate(names):
            limit = self.selector.max_samples_for(task)
            if limit is None:
                continue
            items = np.flatnonzero(keep & (codes == c))
            if len(items) <= limit:
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

    def _report(self, codes: np.ndarray, names: list[str], keep: np.ndarray, reasons: np.ndarray) -> None:
        """Fill :attr:`report` and :attr:`task_report`; warn once about what the selection rules dropped."""
        self.task_report: dict[str, dict[str, int]] = {}
        n = len(names)
        examples = np.bincount(codes, minlength=n)
        kept = np.bincount(codes, weights=keep, minlength=n)
        by_reason = [
            np.bincount(codes, weights=reasons == k + 1, minlength=n) for k in range(len(DROP_REASONS))
        ]
        for c, task in enumerate(names):
            if not examples[c]:
                continue
            counts = dict.fromkeys(TASK_REPORT_KEYS, 0)
            counts["examples"] = int(examples[c])
            counts["kept"] = int(kept[c])
            for r, column in zip(DROP_REASONS, by_reason):
                counts[r] = int(column[c])
            self.task_report[task] = counts
        for task, n_capped in self.capped.items():
            self.task_report[task]["capped"] = n_capped
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
            "(teacher_scores_min / teacher_scores_margin, or an LLM-Embedder negative mode without negatives)",
            dropped,
            len(self.store),
            reasons_text,
            by_task,
        )
