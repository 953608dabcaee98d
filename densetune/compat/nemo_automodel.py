"""NeMo Automodel's public data names (seed 000 / 004), on densetune's core.

A user of NeMo Automodel switches by changing an import (``nemo_automodel.components.datasets.llm`` ->
``densetune.compat.nemo_automodel``); the names, signatures and defaults are NeMo Automodel's:
:func:`make_retrieval_dataset` (a ``datasets.Dataset`` of ``question``, ``doc_text``, ``doc_image``,
``query_instruction``, ``passage_instruction``, plus ``doc_id``), ``RetrievalBiencoderCollator`` /
``BiEncoderCollator`` / ``CrossEncoderCollator`` (defined in :mod:`densetune.data.collators`, which training
uses too) and the collator helpers :func:`_merge_batch_dict` and :func:`_convert_dict_to_list`.

Underneath, files are read by :mod:`densetune.data.formats` / :mod:`densetune.data.store` (format detected by
content, every bad record reported as ``path:line: field: message``) and groups are chosen by
:class:`~densetune.data.groups.GroupSelector` (deterministic from the seed, the epoch and the item).

Differences from NeMo Automodel, on purpose (docs/compat.md lists them all):

- Documents of inline data carry ids derived from their text (``doc_id`` is ``"txt-..."``, not ``""``), so
  the bi-encoder collator emits ``passage_doc_ids`` and the loss can mask in-batch duplicates.
- A negative identical to a positive of the same example is not used as a negative (GroupSelector).
- Errors name the file, record and field (NeMo Automodel raised bare KeyError / assert).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densetune.data.collators import (
    BiEncoderCollator,
    CrossEncoderCollator,
    RetrievalBiencoderCollator,
    _convert_dict_to_list,
    _merge_batch_dict,
    _unpack_doc_values,
)
from densetune.data.dataset import RetrievalTrainDataset
from densetune.data.groups import GroupSelector
from densetune.data.records import Doc, Group
from densetune.errors import ConfigError, DataError

logger = logging.getLogger("densetune.data")

__all__ = [
    "BiEncoderCollator",
    "CrossEncoderCollator",
    "RetrievalBiencoderCollator",
    "RetrievalTransform",
    "_convert_dict_to_list",
    "_merge_batch_dict",
    "_unpack_doc_values",
    "make_retrieval_dataset",
]

DATA_TYPES = ("train", "eval")
# What an item holds (NeMo Automodel's training-time schema, plus doc_id).
ITEM_COLUMNS = ("question", "doc_text", "doc_image", "doc_id", "query_instruction", "passage_instruction")
MODEL_TYPES = ("bi_encoder", "cross_encoder")
_ENTRY_KEYS = {"path", "num_samples"}


# ---------------------------------------------------------------------------------------------------------
# NeMo Automodel: make_retrieval_dataset
# ---------------------------------------------------------------------------------------------------------


def _parse_entries(data_dir_list: Any) -> list[tuple[str, int | None]]:
    """``[(path, num_samples or None)]`` from a path, a ``{"path", "num_samples"}`` dict, or a list of them."""
    if data_dir_list is None:
        raise ConfigError("data_dir_list", "required; give a path or a list of paths / {path, num_samples}")
    entries = data_dir_list if isinstance(data_dir_list, (list, tuple)) else [data_dir_list]
    if not entries:
        raise ConfigError("data_dir_list", "empty; give at least one path")
    out = []
    for i, entry in enumerate(entries):
        key = f"data_dir_list[{i}]"
        if isinstance(entry, (str, Path)):
            out.append((str(entry), None))
            continue
        if not isinstance(entry, Mapping):
            raise ConfigError(key, f"got {type(entry).__name__}; expected a path or {{path, num_samples}}")
        unknown = sorted(set(entry) - _ENTRY_KEYS)
        if unknown:
            raise ConfigError(key, f"unknown field(s) {unknown}; expected only 'path' and 'num_samples'")
        path = entry.get("path")
        if not isinstance(path, (str, Path)) or not str(path):
            raise ConfigError(f"{key}.path", f"got {path!r}; expected a file path")
        num = entry.get("num_samples")
        if num is not None and (isinstance(num, bool) or not isinstance(num, int) or num < 0):
            raise ConfigError(f"{key}.num_samples", f"got {num!r}; expected an integer >= 0 or null")
        out.append((str(path), num))
    return out


class RetrievalTransform:
    """The lazy per-batch step of :func:`make_retrieval_dataset` (NeMo Automodel's ``RetrievalTransform``).

    ``datasets`` calls it (``Dataset.set_transform``) with a batch of raw rows (``question_id``, ``question``,
    ``corpus_id``, ``pos_doc``, ``neg_doc``, ``_row``: the row's index in the example store) and gets the
    training columns back: ``question``, ``doc_text`` (positive first), ``doc_image``, ``doc_id``,
    ``query_instruction``, ``passage_instruction``, built for the current epoch (:meth:`set_epoch`; positives
    rotate with it when ``cycle_positive_docs``). One corpus lookup per batch. It pickles with the store (by
    path), so DataLoader workers rebuild it cheaply.

    Attributes:
        groups: the :class:`~densetune.data.dataset.RetrievalTrainDataset` groups come from (``store``,
            ``selector``: ``negative="cycle"``, negatives in file order, wrapping).
        epoch: the current epoch.
    """

    def __init__(
        self, groups: RetrievalTrainDataset, use_dataset_instruction: bool, use_text_in_document: bool
    ):
        self.groups = groups
        self.use_dataset_instruction = use_dataset_instruction
        self.use_text_in_document = use_text_in_document

    @property
    def epoch(self) -> int:
        return self.groups.epoch

    def set_epoch(self, epoch: int) -> None:
        """Build items for ``epoch`` from now on (NeMo Automodel's ``dataset.set_epoch``)."""
        self.groups.set_epoch(epoch)

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        items = [self._item(g) for g in self.groups.__getitems__([int(r) for r in batch["_row"]])]
        return {key: [item[key] for item in items] for key in ITEM_COLUMNS}

    def _item(self, group: Group) -> dict[str, Any]:
        return {
            "question": group.query,
            "doc_text": [self._text(d) for d in group.docs],
            "doc_image": [d.image for d in group.docs],
            "doc_id": [d.id for d in group.docs],
            "query_instruction": group.query_instruction if self.use_dataset_instruction else "",
            "passage_instruction": group.passage_instruction if self.use_dataset_instruction else "",
        }

    def _text(self, doc: Doc) -> str:
        # NeMo Automodel: a document's text is its corpus "text" (no title); an image document keeps its
        # text only with use_text_in_document.
        if doc.image and not self.use_text_in_document:
            return ""
        return doc.text.strip() if doc.image else doc.text


def _raw_rows(store: Any, paths: list[str], cache_dir: str | Path | None) -> Any:
    """The store's examples as a memory-mapped ``datasets.Dataset`` of raw rows (cached Arrow stream file).

    Columns as NeMo Automodel's raw records: ``question_id``, ``question``, ``corpus_id``, ``pos_doc`` and
    ``neg_doc`` (document ids), plus ``_row``, the example's index in ``store``.
    """
    import datasets
    import pyarrow as pa

    from densetune.data.arrowcache import cache_key, default_cache_dir, fingerprint
    from densetune.data.formats import expand_paths

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key("nemo-automodel-rows", fingerprint(expand_paths(paths, corpora=True)), len(store))
    path = root / "nemo_automodel" / f"{key}.arrow"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = pa.list_(pa.string())
        table = pa.table(
            {
                "question_id": pa.array(store.column("query_id"), pa.string()),
                "question": pa.array(store.column("query"), pa.string()),
                "corpus_id": pa.array(store.column("corpus_id"), pa.string()),
                "pos_doc": pa.array(store.column("pos_ids"), ids),
                "neg_doc": pa.array(store.column("neg_ids"), ids),
                "_row": pa.array(np.arange(len(store), dtype=np.int64)),
            }
        )
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, path)  # atomic: readers never see half a file
    return datasets.Dataset.from_file(str(path))


def make_retrieval_dataset(
    data_dir_list: Any = None,
    data_type: str = "train",
    n_passages: int = 5,
    eval_negative_size: int | None = None,
    seed: int = 42,
    do_shuffle: bool = False,
    max_train_samples: int | None = None,
    train_data_select_offset: int = 0,
    use_dataset_instruction: bool = False,
    cycle_positive_docs: bool = False,
    use_text_in_document: bool = False,
    train_n_passages: int | None = None,
    model_type: str = "bi_encoder",
    cache_dir: str | Path | None = None,
) -> Any:
    """NeMo Automodel's retrieval dataset factory: a ``datasets.Dataset`` of groups, 1 positive + negatives.

    Inputs are read by content, so NeMo inline JSONL/JSON, corpus-id JSON (corpus directories with
    ``merlin_metadata.json``, paths relative to the JSON file) and every other format densetune reads work.
    The positive is ``pos_doc[0]`` (``pos_doc[epoch % len]`` with ``cycle_positive_docs``); negatives are
    ``neg_doc[i % len]`` for i in 0..k-1 in file order (wrapping, with one warning per corpus), k =
    ``n_passages - 1`` for training and ``eval_negative_size`` (default ``n_passages - 1``) for evaluation.

    Args:
        data_dir_list: a path, ``{"path": ..., "num_samples": N}`` (a one-time ``Random(seed)`` sample of that
            source; N >= its size keeps everything with a warning), or a list of those.
        data_type: ``"train"`` or ``"eval"``.
        n_passages: documents per group (1 positive + n-1 negatives).
        eval_negative_size: negatives per group for ``data_type="eval"``.
        seed: seed of the ``num_samples`` draws and of ``do_shuffle``.
        do_shuffle: with ``max_train_samples``, shuffle the examples once (``Dataset.shuffle(seed=seed)``)
            before taking the window, as NeMo Automodel does; without it nothing is shuffled (the per-epoch
            order is the sampler's business).
        max_train_samples: keep this many training examples, from ``train_data_select_offset``.
        train_data_select_offset: start of the ``max_train_samples`` window.
        use_dataset_instruction: fill ``query_instruction`` / ``passage_instruction`` from corpus metadata
            (``""`` otherwise, and always for inline data).
        cycle_positive_docs: rotate the positive with the epoch (``dataset.set_epoch(epoch)``).
        use_text_in_document: keep the text of documents that have an image (image-only otherwise).
        train_n_passages: the older name of ``n_passages``; wins when given.
        model_type: ``"bi_encoder"`` or ``"cross_encoder"``; items are grouped either way (the
            ``CrossEncoderCollator`` flattens them into one row per pair).
        cache_dir: where converted data is cached (default ``$DENSETUNE_CACHE`` or ``~/.cache/densetune``).

    Returns:
        A ``datasets.Dataset`` (Arrow, memory-mapped from densetune's cache) whose raw columns are
        ``question_id``, ``question``, ``corpus_id``, ``pos_doc``, ``neg_doc`` (ids) and ``_row``, with a
        :class:`RetrievalTransform` set (``set_transform``): indexing returns ``question``, ``doc_text``,
        ``doc_image``, ``doc_id``, ``query_instruction``, ``passage_instruction``. ``dataset.set_epoch(e)``
        moves the transform to epoch ``e``. ``.select``, ``.shuffle``, ``.filter`` and ``.map`` work as on any
        ``datasets.Dataset`` (``with_format(None)`` shows the raw rows).

    Raises:
        ConfigError: a bad argument (unknown ``data_type``, malformed ``data_dir_list`` entry), naming it.
        DataError: a bad record (naming file, line and field), an unknown document id, an example without
            negatives when some are needed (raised when the item is built).
    """
    from densetune.data.store import load_examples

    if data_type not in DATA_TYPES:
        raise ConfigError("data_type", f"got {data_type!r}; expected one of {', '.join(DATA_TYPES)}")
    if model_type not in MODEL_TYPES:
        raise ConfigError("model_type", f"got {model_type!r}; expected one of {', '.join(MODEL_TYPES)}")
    if train_n_passages is not None:
        n_passages = train_n_passages
    if isinstance(n_passages, bool) or not isinstance(n_passages, int) or n_passages < 1:
        raise ConfigError("n_passages", f"got {n_passages!r}; expected an integer >= 1")
    for name, value in (("max_train_samples", max_train_samples), ("eval_negative_size", eval_negative_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(name, f"got {value!r}; expected an integer >= 0 or null")
    if isinstance(train_data_select_offset, bool) or not isinstance(train_data_select_offset, int):
        raise ConfigError(
            "train_data_select_offset", f"got {train_data_select_offset!r}; expected an integer"
        )
    entries = _parse_entries(data_dir_list)

    store = load_examples([p for p, _ in entries], cache_dir=cache_dir)
    order: list[int] = []
    offset = 0
    for path, num in entries:
        # load_examples keeps the inputs in order, so each entry's examples are a contiguous range; a
        # directory may expand to several files, all part of its entry.
        size = len(load_examples(path, cache_dir=cache_dir))
        rows = list(range(offset, offset + size))
        if num is not None:
            if num >= size:
                logger.warning("requested %d samples but %s has %d examples; using all", num, path, size)
            else:
                rows = random.Random(seed).sample(rows, num)
        order.extend(rows)
        offset += size
    if offset != len(store):  # defensive: the per-entry sizes must add up to the combined store
        raise DataError(f"inputs changed while loading ({offset} vs {len(store)} examples); load again")

    dataset = _raw_rows(store, [p for p, _ in entries], cache_dir)
    if order != list(range(len(store))):
        dataset = dataset.select(order)
    if data_type == "train":
        # NeMo Automodel: shuffle (Dataset.shuffle(seed), the same permutation for the same rows and seed)
        # and the window apply only when max_train_samples is set; the per-epoch order is the sampler's.
        if max_train_samples is not None:
            if do_shuffle:
                dataset = dataset.shuffle(seed=seed)
            start = max(0, train_data_select_offset)
            dataset = dataset.select(range(start, min(start + max_train_samples, len(dataset))))
        selector = GroupSelector(
            n_passages, positive="cycle" if cycle_positive_docs else "first", negative="cycle", seed=seed
        )
    else:
        selector = GroupSelector(
            n_passages,
            positive="cycle" if cycle_positive_docs else "first",
            negative="cycle",
            seed=seed,
            eval_negative_size=eval_negative_size if eval_negative_size is not None else n_passages - 1,
        )
    transform = RetrievalTransform(
        RetrievalTrainDataset(store, selector), use_dataset_instruction, use_text_in_document
    )
    dataset.set_transform(transform)
    dataset.set_epoch = transform.set_epoch  # as NeMo Automodel: the recipe calls dataset.set_epoch(epoch)
    logger.info(
        "created %s dataset with %d examples from %d source(s)", data_type, len(dataset), len(entries)
    )
    return dataset
