"""FlagEmbedding LLM-Embedder's public data names (seed 001), on densetune's core.

:class:`RetrievalDataset`, :class:`SameDatasetTrainDataset`, :data:`TASK_CONFIG` and
``RetrievalDataCollator`` (defined in :mod:`densetune.data.flag_collators`, which training uses too).

The names, signatures and defaults are the seed's (``get_train_process_fn``, ``prepare_train_dataset``,
``prepare_eval_dataset``, ``prepare_corpus``; :data:`TASK_CONFIG`; BGE-EN-ICL's :func:`get_query_prompt`);
groups come from :class:`~densetune.data.groups.GroupSelector` and same-task batches from
:class:`~densetune.data.samplers.SameTaskBatchSampler`. The differences on purpose are listed in
docs/compat.md: random choices are seeded (the seed used the global RNG); rows the rules drop and batches the
planner leaves out are logged with counts; errors name the record and field.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from glob import glob
from pathlib import Path
from string import Formatter
from typing import Any

from torch.utils.data import Dataset

from densetune.data.corpus import doc_text
from densetune.data.flag_collators import RetrievalDataCollator
from densetune.data.groups import GroupSelector
from densetune.data.prompts import apply_instruction, get_query_prompt
from densetune.data.records import Doc, Example, Group
from densetune.data.tasks import TASK_CONFIG
from densetune.errors import ConfigError, DataError

logger = logging.getLogger("densetune.data")

__all__ = [
    "TASK_CONFIG",
    "RetrievalDataCollator",
    "RetrievalDataset",
    "SameDatasetTrainDataset",
    "get_query_prompt",
]


def _train_features() -> Any:
    import datasets

    return datasets.Features(
        {
            "query": datasets.Value("string"),
            "key": datasets.List(datasets.Value("string")),
            "task": datasets.Value("string"),
            "teacher_scores": datasets.List(datasets.Value("float64")),
        }
    )


def _row_example(row: Mapping[str, Any], index: int) -> Example:
    """An LLM-Embedder row (query, task, pos, neg, history, teacher_scores) as an Example."""

    def texts(name: str) -> list[str]:
        value = row.get(name)
        if value is None:
            return []
        return [value] if isinstance(value, str) else [str(v) for v in value]

    if "query" not in row or row["query"] is None:
        raise DataError(f"missing; got fields {sorted(row)}", path=f"row {index}", field="query")
    history = texts("history") if row.get("history") is not None else []
    positives = [] if history else texts("pos")
    negatives = history if history else texts("neg")
    scores = row.get("teacher_scores")
    pos_scores = neg_scores = None
    if scores is not None:
        scores = [float(s) for s in scores]
        if len(scores) != len(positives) + len(negatives):
            raise DataError(
                f"{len(scores)} teacher_scores for {len(positives)} positives + {len(negatives)} "
                f"{'history rows' if history else 'negatives'}; expected one score per document",
                path=f"row {index}",
                field="teacher_scores",
            )
        pos_scores, neg_scores = scores[: len(positives)], scores[len(positives) :]
    return Example(
        query_id=str(row.get("query_id", index)),
        query=str(row["query"]),
        positives=[Doc(text=t) for t in positives],
        negatives=[Doc(text=t) for t in negatives],
        pos_scores=pos_scores,
        neg_scores=neg_scores,
        task=str(row.get("task") or ""),
        history=[Doc(text=t) for t in history],
        source=f"row {index}",
    )


def _train_row(group: Group, instruction: Mapping[str, str] | None) -> dict[str, Any]:
    # LLM-Embedder output: instructions prepended without a separator, keys = [positive, negatives...].
    query_inst = instruction["query"] if instruction else None
    key_inst = instruction["key"] if instruction else None
    return {
        "query": apply_instruction(group.query, query_inst),
        "key": [apply_instruction(doc_text(d), key_inst) for d in group.docs],
        "task": group.task,
        "teacher_scores": group.scores,
    }


def _selector(
    train_group_size: int,
    select_positive: str,
    select_negative: str,
    teacher_scores_margin: float | None,
    teacher_scores_min: float | None,
    stable_distill: bool,
    seed: int,
) -> GroupSelector:
    return GroupSelector(
        train_group_size,
        positive=select_positive,
        negative=select_negative,
        teacher_scores_min=teacher_scores_min,
        teacher_scores_margin=teacher_scores_margin,
        stable_distill=stable_distill,
        seed=seed,
    )


def _task_entry(config: Mapping[str, Any], section: str, task: str, path: str) -> Mapping[str, Any]:
    table = config.get(section)
    if table is None:
        raise ConfigError(
            "config", f"has no {section!r} section; expected TASK_CONFIG['llm-embedder'] or alike"
        )
    try:
        return table[task]
    except KeyError:
        raise ConfigError(
            f"config.{section}",
            f"no entry for task {task!r} (from {path}); known tasks: {', '.join(map(str, table))}",
        ) from None


class RetrievalDataset:
    """FlagEmbedding LLM-Embedder's dataset preparation (static methods, the seed's names and signatures).

    Example:
        >>> config = TASK_CONFIG["llm-embedder"]
        >>> dataset, ranges = RetrievalDataset.prepare_train_dataset(
        ...     "data/*/train.json", config=config, train_group_size=8, add_instruction=True, use_train_config=True
        ... )
        >>> ranges  # {"msmarco": (0, 40000), "qrecc": (40000, 68000), ...}
    """

    @staticmethod
    def get_train_process_fn(
        train_group_size: int = 8,
        select_positive: str = "first",
        select_negative: str = "random",
        teacher_scores_margin: float | None = None,
        teacher_scores_min: float | None = None,
        stable_distill: bool = False,
        instruction: Mapping[str, str] | None = None,
        seed: int = 42,
    ) -> Callable[..., Any]:
        """A row-processing function for ``datasets.Dataset.map``: LLM-Embedder rows -> training groups.

        Rows (``query``, ``task``, ``pos``, ``neg``, optional ``history``, ``teacher_scores`` aligned with
        pos + neg) become ``{"query", "key": [positive, negatives...], "task", "teacher_scores"}`` with the
        instruction prepended, chosen by :class:`GroupSelector` (see it for every mode); rows the rules drop
        (teacher-score filters, no negatives) are left out of the output.

        Use with ``dataset.map(fn, batched=True, with_indices=True, remove_columns=dataset.column_names)``;
        the row index seeds the random choices (``seed`` too; the seed used the global RNG). A single row
        (a dict with a string ``query``) gives one dict, or None when dropped.

        Args:
            train_group_size: documents per group (1 positive + G-1 negatives).
            select_positive: ``first`` | ``random`` | ``teacher`` | ``teacher-pos``.
            select_negative: ``random`` | ``first`` | ``teacher+`` | ``teacher-``.
            teacher_scores_margin: drop rows whose scores span less than this.
            teacher_scores_min: drop rows whose best score is below this.
            stable_distill: sort the chosen negatives by teacher score, highest first.
            instruction: ``{"query": ..., "key": ...}`` prepended to the query / every key.
            seed: seed of the random choices (densetune addition).
        """
        selector = _selector(
            train_group_size,
            select_positive,
            select_negative,
            teacher_scores_margin,
            teacher_scores_min,
            stable_distill,
            seed,
        )
        counter = [0]

        def process(batch: Mapping[str, Any], indices: Sequence[int] | int | None = None) -> Any:
            if isinstance(batch.get("query"), str):
                index = indices if isinstance(indices, int) else counter[0]
                counter[0] += 1
                group = selector.select(_row_example(batch, index), 0, index)
                return None if group is None else _train_row(group, instruction)
            size = len(batch["query"])
            if indices is None:
                indices = range(counter[0], counter[0] + size)
                counter[0] += size
            out: dict[str, list] = {"query": [], "key": [], "task": [], "teacher_scores": []}
            for k, index in enumerate(indices):
                row = {name: values[k] for name, values in batch.items()}
                group = selector.select(_row_example(row, int(index)), 0, int(index))
                if group is None:
                    continue
                for name, value in _train_row(group, instruction).items():
                    out[name].append(value)
            return out

        process.selector = selector  # type: ignore[attr-defined]
        return process

    @staticmethod
    def prepare_train_dataset(
        data_file: str | Sequence[str] | None = None,
        cache_dir: str | None = None,
        config: Mapping[str, Any] | None = None,
        train_group_size: int = 8,
        select_positive: str = "first",
        select_negative: str = "random",
        max_sample_num: int | None = None,
        teacher_scores_margin: float | None = None,
        teacher_scores_min: float | None = None,
        stable_distill: bool = False,
        add_instruction: bool = False,
        instruction: Mapping[str, str] | None = None,
        use_train_config: bool = False,
        seed: int = 42,
    ) -> tuple[Any, dict[str, tuple[int, int]] | None]:
        """Training groups from LLM-Embedder files, and the index range of each dataset.

        Each file is read (format detected by content), its rows turned into groups as
        :meth:`get_train_process_fn` describes, with the file's task settings when asked, and the files
        concatenated. The dataset name of a file is its parent directory; a file listed twice is upsampled
        (its second copy is named ``{name}_1``, and re-draws its random choices).

        Args:
            data_file: a path, a glob (``*``), or a list of paths.
            cache_dir: where corpora / conversions are cached.
            config: ``TASK_CONFIG[version]`` (``{"instruction": {task: ...}, "training": {task: ...}}``);
                default ``TASK_CONFIG["llm-embedder"]`` when needed.
            train_group_size, select_positive, select_negative, teacher_scores_margin, teacher_scores_min,
                stable_distill: as :meth:`get_train_process_fn`.
            max_sample_num: keep at most this many groups per file (the last ones, as the seed's
                ``train_test_split(max_sample_num, shuffle=False)["test"]``).
            add_instruction: prepend ``config["instruction"][task]`` (the file's task) to queries and keys.
            instruction: an instruction for every file (when ``add_instruction`` is False).
            use_train_config: take the selection settings and ``max_sample_num`` from
                ``config["training"][task]``.
            seed: seed of the random choices (densetune addition).

        Returns:
            ``(datasets.Dataset with columns query, key, task, teacher_scores, {name: (start, end)})``;
            ``(None, None)`` without ``data_file``.

        Raises:
            ConfigError: a task without an entry in ``config``.
            DataError: a bad record, naming file, line and field.
        """
        import datasets

        from densetune.data.formats import iter_examples

        if data_file is None:
            return None, None
        if isinstance(data_file, (str, Path)):
            data_file = sorted(glob(str(data_file))) if "*" in str(data_file) else [str(data_file)]
            if not data_file:
                raise DataError("no files match this pattern", data_file)
        if (add_instruction or use_train_config) and config is None:
            config = TASK_CONFIG["llm-embedder"]

        parts = []
        ranges: dict[str, tuple[int, int]] = {}
        duplicates: dict[str, int] = defaultdict(int)
        offset = 0
        for path in data_file:
            examples = list(iter_examples(path, cache_dir=cache_dir))
            if not examples:
                raise DataError("no training records", path)
            task = examples[0].task
            file_instruction = instruction
            if add_instruction:
                assert config is not None
                file_instruction = _task_entry(config, "instruction", task, str(path))
            settings = {
                "select_positive": select_positive,
                "select_negative": select_negative,
                "max_sample_num": max_sample_num,
                "teacher_scores_margin": teacher_scores_margin,
                "teacher_scores_min": teacher_scores_min,
                "stable_distill": stable_distill,
            }
            if use_train_config:
                assert config is not None
                train_config = _task_entry(config, "training", task, str(path))
                settings.update({k: train_config.get(k, v) for k, v in settings.items()})
            selector = _selector(
                train_group_size,
                settings["select_positive"],
                settings["select_negative"],
                settings["teacher_scores_margin"],
                settings["teacher_scores_min"],
                settings["stable_distill"],
                seed,
            )
            rows: dict[str, list] = {"query": [], "key": [], "task": [], "teacher_scores": []}
            for k, example in enumerate(examples):
                # The global offset seeds the choices, so an upsampled copy draws its own negatives.
                group = selector.select(example, 0, offset + k)
                if group is None:
                    continue
                for name, value in _train_row(group, file_instruction).items():
                    rows[name].append(value)
            kept = len(rows["query"])
            if kept < len(examples):
                logger.warning(
                    "%s: %d of %d rows dropped by the selection rules (%s)",
                    path,
                    len(examples) - kept,
                    len(examples),
                    ", ".join(f"{k}: {v}" for k, v in selector.stats.items() if v and k != "selected"),
                )
            limit = settings["max_sample_num"]
            if limit is not None and kept > limit:
                rows = {name: values[kept - limit :] for name, values in rows.items()}
                kept = limit
            parts.append(datasets.Dataset.from_dict(rows, features=_train_features()))

            name = Path(path).parent.name
            if name in ranges:
                duplicates[name] += 1
                name = f"{name}_{duplicates[name]}"
            ranges[name] = (offset, offset + kept)
            offset += kept
        return datasets.concatenate_datasets(parts), ranges

    @staticmethod
    def prepare_eval_dataset(
        data_file: str | Sequence[str] | None = None,
        cache_dir: str | None = None,
        instruction: Mapping[str, str] | None = None,
        eval_method: str = "retrieve",
    ) -> Any:
        """Evaluation queries (``retrieve``) or queries with candidates to rerank (``rerank``).

        Rows give ``query`` and optionally ``query_id`` (default: the row index) and ``task``. For
        ``rerank`` the candidates are ``key`` (with ``key_index``, default ``0..len-1``) or ``pos + neg``
        (with ``pos_index + neg_index`` when given); ``instruction["key"]`` is prepended to each.

        Returns:
            A ``datasets.Dataset`` with ``query``, ``query_id``, ``task`` (and ``key``, ``key_index``).

        Raises:
            ConfigError: an unknown ``eval_method``.
            DataError: a rerank row with neither ``key`` nor ``pos``/``neg``, naming the row.
        """
        import datasets

        if data_file is None:
            return None
        methods = ("retrieve", "retrieval", "rerank")
        if eval_method not in methods:
            raise ConfigError("eval_method", f"got {eval_method!r}; expected one of {', '.join(methods)}")
        files = [data_file] if isinstance(data_file, (str, Path)) else list(data_file)
        dataset = datasets.load_dataset(
            "json", data_files=[str(f) for f in files], split="train", cache_dir=cache_dir
        )
        default_task = dataset[0]["task"] if "task" in dataset.column_names and len(dataset) else "nan"
        query_inst = instruction["query"] if instruction else None
        key_inst = instruction["key"] if instruction else None

        def process(batch: Mapping[str, list], indices: list[int]) -> dict[str, list]:
            out: dict[str, list] = defaultdict(list)
            for k, index in enumerate(indices):
                row = {name: values[k] for name, values in batch.items()}
                query_id = row.get("query_id")
                out["query"].append(apply_instruction(row["query"], query_inst))
                out["query_id"].append(index if query_id is None else query_id)
                out["task"].append(row.get("task") or default_task)
                if eval_method != "rerank":
                    continue
                if row.get("key") is not None:
                    keys = list(row["key"])
                    key_index = row.get("key_index")
                elif row.get("pos") is not None and row.get("neg") is not None:
                    keys = list(row["pos"]) + list(row["neg"])
                    key_index = None
                    if row.get("pos_index") is not None:
                        key_index = list(row["pos_index"]) + list(row.get("neg_index") or [])
                else:
                    raise DataError(
                        "expected either 'key' or both 'pos' and 'neg' to rerank", files[0], f"row {index}"
                    )
                out["key"].append([apply_instruction(str(key), key_inst) for key in keys])
                out["key_index"].append(list(key_index) if key_index is not None else list(range(len(keys))))
            return dict(out)

        return dataset.map(process, batched=True, with_indices=True, remove_columns=dataset.column_names)

    @staticmethod
    def prepare_corpus(
        data_file: str | Sequence[str] | None,
        key_template: str = "{title} {text}",
        cache_dir: str | None = None,
        instruction: Mapping[str, str] | None = None,
    ) -> Any:
        """A corpus whose rows render as ``{"content": instruction["key"] + key_template.format(**row)}``.

        The rendering is lazy (``set_transform``), as in the seed.

        Raises:
            DataError: the template names a field the corpus does not have (listing the fields it has).
        """
        import datasets

        if data_file is None:
            return None
        fields = [name for _, name, _, _ in Formatter().parse(key_template) if name is not None]
        files = [data_file] if isinstance(data_file, (str, Path)) else list(data_file)
        dataset = datasets.load_dataset(
            "json", data_files=[str(f) for f in files], split="train", cache_dir=cache_dir
        )
        missing = [f for f in fields if f not in dataset.column_names]
        if missing:
            raise DataError(
                f"key_template {key_template!r} needs {missing}; the corpus has {dataset.column_names}",
                files[0],
                field=missing[0],
            )
        key_inst = instruction["key"] if instruction else None

        def render(batch: Mapping[str, list]) -> dict[str, list]:
            size = len(batch[fields[0]]) if fields else len(next(iter(batch.values())))
            contents = []
            for k in range(size):
                values = {f: "" if batch[f][k] is None else batch[f][k] for f in fields}
                contents.append(apply_instruction(key_template.format(**values), key_inst))
            return {"content": contents}

        dataset.set_transform(render)
        return dataset


# ---------------------------------------------------------------------------------------------------------
# FlagEmbedding LLM-Embedder: SameDatasetTrainDataset
# ---------------------------------------------------------------------------------------------------------


class SameDatasetTrainDataset(Dataset):
    """One item = one per-process batch whose examples all come from one dataset (LLM-Embedder's class).

    Built on :class:`~densetune.data.samplers.SameTaskBatchSampler`: every process plans the same global
    batches (``batch_size * num_processes``) from ``seed`` and the epoch, and item ``i`` is this process'
    slice of global batch ``i`` (the seed's ``dataset[batch_indices]``: a dict of columns for a
    ``datasets.Dataset``). Use it with ``batch_size=1`` and ``RetrievalDataCollator(inbatch_same_dataset=True)``.

    ``organize_method``: ``epoch`` | ``epoch-random`` | ``epoch-static`` | ``random`` (see the sampler).
    Incomplete global batches are dropped as in the seed, but with a warning giving the counts; a dataset
    smaller than one global batch is kept as one smaller batch instead of vanishing.

    ``len()`` is the number of batches of one epoch on this process (the seed returned
    ``len(dataset) // batch_size``); an index past it continues into the next epoch (the seed refreshed its
    epoch when it ran out), so an outer sampler over ``range(len)`` and one that keeps counting both work.

    Args:
        dataset: a ``datasets.Dataset`` (or any sequence indexable by a list of ints, or by int).
        dataset_indices_range: ``{name: (start, end)}`` from :meth:`RetrievalDataset.prepare_train_dataset`.
        batch_size: examples per process per step.
        seed: shared by all processes.
        organize_method: how batches are planned.
        process_index: this process' rank.
        num_processes: number of processes.
    """

    def __init__(
        self,
        dataset: Any,
        dataset_indices_range: Mapping[str, tuple[int, int]],
        batch_size: int,
        seed: int,
        organize_method: str,
        process_index: int = 0,
        num_processes: int = 1,
    ):
        from densetune.data.samplers import SameTaskBatchSampler

        self.dataset = dataset
        self.dataset_indices_range = dict(dataset_indices_range)
        self.batch_size = batch_size
        self.organize_method = organize_method
        self.process_index = process_index
        self.num_processes = num_processes
        self.sampler = SameTaskBatchSampler.from_index_ranges(
            self.dataset_indices_range,
            batch_size,
            seed=seed,
            organize=organize_method,
            drop_last=True,
            small_task="keep",
            rank=process_index,
            world_size=num_processes,
        )
        self.epoch = 0
        self._plans: dict[int, list[list[int]]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._plan(self.epoch))

    def _plan(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            self.sampler.set_epoch(epoch)
            self._plans = {epoch: [list(map(int, b)) for b in self.sampler]}
        return self._plans[epoch]

    def batch_indices(self, idx: int) -> list[int]:
        """Dataset rows of item ``idx`` (past ``len()``: the following epochs)."""
        per_epoch = len(self._plan(self.epoch))
        if per_epoch == 0:
            raise IndexError(
                "no batches: every dataset is smaller than what the batch size and processes allow"
            )
        epoch, step = self.epoch + idx // per_epoch, idx % per_epoch
        return self._plan(epoch)[step]

    def __getitem__(self, idx: int) -> Any:
        rows = self.batch_indices(int(idx))
        try:
            return self.dataset[rows]
        except (TypeError, KeyError, IndexError):
            return [self.dataset[i] for i in rows]
