"""FlagEmbedding BGE-EN-ICL's public data names (seed 002), on densetune's core.

``DataArguments`` (upstream fields and defaults), ``SameDatasetTrainDataset(args, batch_size, seed, tokenizer,
process_index=0, num_processes=1)``, ``SameEmbedCollator`` and ``get_query_prompt``, so the seed's example runs
with only its imports changed::

    args = DataArguments(train_data="train.jsonl", query_max_len=512, passage_max_len=512,
                         train_group_size=8, use_special_tokens=True)
    dataset = SameDatasetTrainDataset(args, batch_size=32, seed=42, tokenizer=tokenizer)
    collator = SameEmbedCollator(tokenizer, query_max_len=512, passage_max_len=512)
    loader = DataLoader(dataset, batch_size=1, collate_fn=collator)

Each item is one whole batch for this process, all of its rows from one dataset (one training file, one
Hub split, or one dataset of a saved set): the tokenised, unpadded ``(queries, passages, messages,
teacher_scores)`` the collator pads. Rows are read and checked by densetune's BGE-EN-ICL (``flag``) reader;
groups come from :class:`~densetune.data.groups.GroupSelector` (random positive, random negatives tiled when
short), texts (prompts, in-context examples, sts / clustering passages) from
:class:`~densetune.data.flag_collators.SameEmbedCollator`. ``densetune train`` does the same with
``SameTaskBatchSampler`` (docs/bge_icl.md); this class is for code written against FlagEmbedding.

Differences from the seed, on purpose (docs/compat.md):

- Items follow the index: item ``i`` of epoch ``e`` is always the same batch (any worker, any resumed run);
  the seed ignored the index and counted calls. An index past ``len()`` continues into the next epoch, and
  :meth:`SameDatasetTrainDataset.refresh_epoch` moves to the next epoch, as the seed's did when it ran out.
- ``len()`` is the number of batches of one epoch (the seed returned that times ``num_processes``).
- Random choices (positive, negatives, in-context examples) are seeded from ``seed``; the seed used the
  global RNG for them.
- Incomplete global batches are dropped as in the seed, with a warning giving the counts.
- In-context examples get the room the query leaves (the seed's fixed ``query_max_len - 512`` budget admits
  none below 512 tokens; ``SameEmbedCollator(icl_budget=...)`` reproduces it).
- Bad rows raise a one-line error naming the file (or dataset), the row and the field.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from densetune.data.flag_collators import SameEmbedCollator
from densetune.data.formats import expand_paths, iter_examples
from densetune.data.groups import GroupSelector
from densetune.data.jsonrecords import RawRecord, Record
from densetune.data.prompts import get_query_prompt
from densetune.data.records import Example
from densetune.errors import ConfigError, DataError

logger = logging.getLogger("densetune.data")

__all__ = ["DataArguments", "SameDatasetTrainDataset", "SameEmbedCollator", "get_query_prompt"]

# The seed's saved-set index file: dataset names, their rows and batch sizes, next to the Arrow files.
FLAG_LOG_NAME = ".log"


@dataclass
class DataArguments:
    """BGE-EN-ICL's data arguments: the upstream fields and defaults.

    ``train_data`` is a path, a list of paths, directories (their ``.jsonl`` / ``.json`` files, each one
    dataset), ``datasets.save_to_disk`` directories, or a Hugging Face Hub dataset name (read from the local
    cache when offline; each split is one dataset).
    """

    train_data: str | list[str] = "cfli/bge-e5data"
    train_group_size: int = 8
    query_max_len: int = 32
    passage_max_len: int = 128
    max_example_num_per_dataset: int = 10_000_000_000
    query_instruction_for_retrieval: str = "query: "
    passage_instruction_for_retrieval: str = "passage: "
    cache_path: str = "./data_dir"
    load_from_disk: bool = False
    load_disk_path: str | None = None
    save_to_disk: bool = False
    save_disk_path: str | None = None
    num_shards: int = 0
    save_max_shard_size: str = "50GB"
    exit_after_save: bool = False
    shuffle_ratio: float = 0.0
    use_special_tokens: bool = True
    nli_all_prompt: bool = True
    symmetric_batch_size: int = 128
    symmetric_train_group_size: int = 8
    max_class_neg: int = 1000
    example_query_max_len: int = 64
    example_passage_max_len: int = 96
    retrieval_use_examples: bool = True
    # densetune: the most in-context examples per query (the seed drew 0..5).
    max_examples: int = field(default=5)


def _features() -> Any:
    import datasets

    strings = datasets.Sequence(datasets.Value("string"))
    floats = datasets.Sequence(datasets.Value("float64"))
    return datasets.Features(
        {
            "query": datasets.Value("string"),
            "pos": strings,
            "neg": strings,
            "pos_scores": floats,
            "neg_scores": floats,
            "prompt": datasets.Value("string"),
            "type": datasets.Value("string"),
            "category": datasets.Value("string"),
            "query_id": datasets.Value("string"),
        }
    )


def _example_row(ex: Example) -> dict[str, Any]:
    return {
        "query": ex.query,
        "pos": [d.text for d in ex.positives],
        "neg": [d.text for d in ex.negatives],
        "pos_scores": ex.pos_scores,
        "neg_scores": ex.neg_scores,
        "prompt": ex.prompt,
        "type": ex.type,
        "category": ex.category,
        "query_id": ex.query_id,
    }


def _is_saved_dataset(path: Path) -> bool:
    """A ``datasets.save_to_disk`` directory (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _row_example(row: dict[str, Any], name: str, index: int) -> Example:
    """A row of a loaded set as an Example, checked as the file reader checks it (errors name set and row)."""
    from densetune.data.formats import _CONVERTERS

    obj = {k: v for k, v in row.items() if v is not None}
    record = Record(Path(name), RawRecord(obj=obj, line=index + 1, index=index))
    return _CONVERTERS["flag"](record, name)


class SameDatasetTrainDataset(Dataset):
    """One item = one batch for this process, all rows from one dataset (BGE-EN-ICL's class).

    Every process plans the same global batches (``batch_size * num_processes`` rows; symmetric datasets
    ``symmetric_batch_size`` rows) from ``seed`` and the epoch and takes its slice. Documents per group by
    the dataset's ``type``: ``train_group_size``; ``symmetric_sts`` / ``symmetric_clustering``:
    ``symmetric_train_group_size``; ``symmetric_class``: ``max_class_neg + 1``; ``only_1neg``: 2.

    Args:
        args: :class:`DataArguments`.
        batch_size: rows per process per step (non-symmetric datasets).
        seed: shared by all processes.
        tokenizer: the model's tokenizer (with ``<instruct>``/``<query>``/``<response>`` added when
            ``args.use_special_tokens``).
        process_index: this process' rank.
        num_processes: number of processes.

    Attributes:
        dataset: the processed rows, a ``datasets.Dataset`` (Arrow) concatenating every dataset.
        each_data_inxs: the rows of each dataset in ``dataset``; ``data_names`` their names;
        batch_size_inxs: each dataset's per-process batch size.
        epoch: the current epoch (:meth:`refresh_epoch` advances it).

    Raises:
        DataError: a missing path, a bad row (file or set, row, field), a dataset with no usable rows.
        ConfigError: a bad argument (naming it).
    """

    def __init__(
        self,
        args: DataArguments,
        batch_size: int,
        seed: int,
        tokenizer: Any,
        process_index: int = 0,
        num_processes: int = 1,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError("batch_size", f"got {batch_size!r}; expected an integer >= 1")
        if not 0 <= process_index < num_processes:
            raise ConfigError("process_index", f"got {process_index} for {num_processes} processes")
        self.args = args
        self.batch_size = batch_size
        self.seed = int(seed)
        self.tokenizer = tokenizer
        self.process_index = process_index
        self.num_processes = num_processes
        self.query_max_len = args.query_max_len
        self.passage_max_len = args.passage_max_len
        self.collator = SameEmbedCollator(
            tokenizer,
            query_max_len=args.query_max_len,
            passage_max_len=args.passage_max_len,
            use_special_tokens=args.use_special_tokens,
            retrieval_use_examples=args.retrieval_use_examples,
            max_examples=args.max_examples,
            example_query_max_len=args.example_query_max_len,
            example_passage_max_len=args.example_passage_max_len,
            seed=self.seed,
        )
        self._load()
        if args.save_to_disk:
            self.save_to_disk(args.save_disk_path)
            if args.exit_after_save:
                raise SystemExit(0)
        self._selectors: dict[int, GroupSelector] = {}
        self.stats: Counter = Counter()
        self.epoch = 0
        self._plans: dict[int, list[np.ndarray]] = {}

    # -- loading ------------------------------------------------------------------------------------------

    def _load(self) -> None:
        import datasets

        args = self.args
        parts: list[tuple[str, Any]] = []
        if args.load_from_disk:
            if not args.load_disk_path:
                raise ConfigError("load_disk_path", "required with load_from_disk=True")
            paths = [args.load_disk_path]
        else:
            paths = args.train_data if isinstance(args.train_data, (list, tuple)) else [args.train_data]
        for raw in paths:
            parts.extend(self._read(str(raw)))
        if not parts:
            raise DataError("no datasets found", ", ".join(map(str, paths)), field="train_data")
        tables, self.each_data_inxs, self.batch_size_inxs, self.data_names = [], [], [], []
        start = 0
        rng = random.Random(self.seed)
        for name, table in parts:
            if len(table) == 0:
                logger.warning("dataset %s has no rows; left out", name)
                continue
            if len(table) > args.max_example_num_per_dataset:
                keep = sorted(rng.sample(range(len(table)), args.max_example_num_per_dataset))
                logger.info("dataset %s: kept %d of %d rows", name, len(keep), len(table))
                table = table.select(keep)
            tables.append(table)
            self.each_data_inxs.append(np.arange(start, start + len(table)))
            start += len(table)
            symmetric = "symmetric" in (table[0]["type"] or "")
            self.batch_size_inxs.append(
                max(1, args.symmetric_batch_size // self.num_processes) if symmetric else self.batch_size
            )
            self.data_names.append(name)
        if not tables:
            raise DataError("every dataset is empty", ", ".join(map(str, paths)), field="train_data")
        self.dataset = datasets.concatenate_datasets(tables)

    def _read(self, raw: str) -> list[tuple[str, Any]]:
        """``[(dataset name, datasets.Dataset)]`` for one entry of ``train_data``."""
        import datasets

        path = Path(raw)
        if _is_saved_dataset(path):
            return self._read_saved(path)
        if path.exists() or any(ch in raw for ch in "*?["):
            out = []
            for file in expand_paths(path):
                rows = [_example_row(ex) for ex in iter_examples(file)]
                out.append((str(file), datasets.Dataset.from_list(rows, features=_features())))
            return out
        # Not on disk: a Hub dataset (from the local cache when HF_DATASETS_OFFLINE=1).
        try:
            loaded = datasets.load_dataset(raw, cache_dir=self.args.cache_path)
        except Exception as exc:  # datasets raises many kinds; one line for the user either way
            raise DataError(
                f"not a file, directory or loadable Hub dataset ({type(exc).__name__}: {exc})",
                raw,
                field="train_data",
            ) from None
        splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("train", loaded)]
        return [(f"{raw}:{split}", table) for split, table in splits]

    def _read_saved(self, path: Path) -> list[tuple[str, Any]]:
        import datasets

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            return [(f"{path}:{split}", table) for split, table in loaded.items()]
        log = path / FLAG_LOG_NAME
        if not log.is_file():
            return [(str(path), loaded)]
        try:
            info = json.loads(log.read_text(encoding="utf-8"))
            ranges = [np.asarray(x, dtype=np.int64) for x in info["each_data_inxs"]]
            names = [str(x) for x in info["data_names"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"unreadable set index ({exc}); expected each_data_inxs and data_names", log
            ) from None
        if len(ranges) != len(names):
            raise DataError(f"{len(ranges)} row lists for {len(names)} names", log, field="data_names")
        return [(name, loaded.select(rows)) for name, rows in zip(names, ranges)]

    def save_to_disk(self, path: str | os.PathLike | None) -> None:
        """Write the processed set (Arrow) and its index (``.log``: names, rows, batch sizes) to ``path``.

        ``DataArguments(load_from_disk=True, load_disk_path=path)``, or ``train_data=path``, reads it back.
        """
        if not path:
            raise ConfigError("save_disk_path", "required with save_to_disk=True")
        out = Path(path)
        if (out / FLAG_LOG_NAME).exists():
            logger.warning("%s already holds a saved set; not overwritten", out)
            return
        out.mkdir(parents=True, exist_ok=True)
        if self.args.num_shards > 0:
            self.dataset.save_to_disk(str(out), num_shards=self.args.num_shards)
        else:
            self.dataset.save_to_disk(str(out), max_shard_size=self.args.save_max_shard_size)
        info = {
            "train_data": self.args.train_data,
            "each_data_inxs": [x.tolist() for x in self.each_data_inxs],
            "batch_size_inxs": self.batch_size_inxs,
            "data_names": self.data_names,
        }
        (out / FLAG_LOG_NAME).write_text(json.dumps(info, ensure_ascii=False, indent=1), encoding="utf-8")

    # -- planning -------------------------------------------------------------------------------------------

    def _plan(self, epoch: int) -> list[np.ndarray]:
        """The epoch's global batches: datasets in shuffled order, each shuffled and cut, batches shuffled."""
        if epoch in self._plans:
            return self._plans[epoch]
        rng = np.random.default_rng([self.seed, epoch])
        batches: list[np.ndarray] = []
        dropped = Counter()
        for d in rng.permutation(len(self.each_data_inxs)):
            rows = rng.permutation(self.each_data_inxs[d])
            size = self.batch_size_inxs[d] * self.num_processes
            full = len(rows) // size
            batches.extend(rows[i * size : (i + 1) * size] for i in range(full))
            if len(rows) % size:
                dropped[self.data_names[d]] = len(rows) % size
        order = rng.permutation(len(batches))
        plan = [batches[i] for i in order]
        if dropped:
            logger.warning(
                "epoch %d: left out %d rows of incomplete batches (%s)",
                epoch,
                sum(dropped.values()),
                ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())),
            )
        self._plans = {epoch: plan}
        return plan

    def refresh_epoch(self) -> None:
        """Move to the next epoch: a new order of datasets, rows and batches (the seed's ``refresh_epoch``)."""
        self.epoch += 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._plan(self.epoch))

    def batch_indices(self, idx: int) -> np.ndarray:
        """Rows of ``dataset`` in item ``idx`` for this process (past ``len()``: the following epochs)."""
        per_epoch = len(self._plan(self.epoch))
        if per_epoch == 0:
            raise IndexError("no batches: every dataset is smaller than one global batch")
        epoch, step = self.epoch + idx // per_epoch, idx % per_epoch
        batch = self._plan(epoch)[step]
        size = len(batch) // self.num_processes
        return batch[self.process_index * size : (self.process_index + 1) * size]

    # -- items ----------------------------------------------------------------------------------------------

    def group_size(self, kind: str) -> int:
        """Documents per group (1 positive + negatives) for rows of this type."""
        if "symmetric" in kind and ("sts" in kind or "clustering" in kind):
            return self.args.symmetric_train_group_size
        if "only_1neg" in kind:
            return 2
        if "symmetric" in kind and "class" in kind:
            return self.args.max_class_neg + 1
        return self.args.train_group_size

    def _selector(self, size: int) -> GroupSelector:
        if size not in self._selectors:
            self._selectors[size] = GroupSelector(size, positive="random", negative="random", seed=self.seed)
        return self._selectors[size]

    def __getitem__(self, idx: int) -> tuple[dict[str, list], dict[str, list], list[str], list[float]]:
        idx = int(idx)
        per_epoch = len(self)
        epoch = self.epoch + (idx // per_epoch if per_epoch else 0)
        rows = [int(r) for r in self.batch_indices(idx)]
        table = self.dataset.select(rows)
        name = self._name_of(rows[0])
        groups = []
        for row_index, row in zip(rows, table):
            ex = _row_example(row, name, row_index)
            group = self._selector(self.group_size(ex.type)).select(ex, epoch, row_index)
            if group is None:
                self.stats["no_negatives"] += 1
                continue
            groups.append(group)
        if not groups:
            raise DataError("no row of this batch has negatives", name, field="neg")
        return self.collator.build(groups)

    def _name_of(self, row: int) -> str:
        for name, rows in zip(self.data_names, self.each_data_inxs):
            if len(rows) and rows[0] <= row <= rows[-1]:
                return name
        return "dataset"
