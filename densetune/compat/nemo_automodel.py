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
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

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
    "NeMoRetrievalDataset",
    "RetrievalBiencoderCollator",
    "_convert_dict_to_list",
    "_merge_batch_dict",
    "_unpack_doc_values",
    "make_retrieval_dataset",
]

DATA_TYPES = ("train", "eval")
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


class NeMoRetrievalDataset(Dataset):
    """What :func:`make_retrieval_dataset` returns: a map-style dataset of NeMo Automodel items.

    ``dataset[i]`` is ``{"question", "doc_text": [positive, negatives...], "doc_image", "doc_id",
    "query_instruction", "passage_instruction"}`` for the current epoch (:meth:`set_epoch`; positives rotate
    with it when ``cycle_positive_docs``). Items are built on request (the seed's lazy ``set_transform``);
    ``__getitems__`` builds a whole batch with one corpus lookup. Use it as the ``dataset`` of a
    ``torch.utils.data.DataLoader`` or ``torchdata.stateful_dataloader.StatefulDataLoader``.

    Attributes:
        store: the :class:`~densetune.data.store.ExampleStore` the items come from.
        order: the store index of each item (after ``num_samples``, shuffling and the sample window).
        selector: the :class:`GroupSelector` (``negative="cycle"``: negatives in file order, wrapping).
    """

    def __init__(
        self,
        groups: RetrievalTrainDataset,
        order: np.ndarray,
        use_dataset_instruction: bool,
        use_text_in_document: bool,
    ):
        self._groups = groups
        self.store = groups.store
        self.selector = groups.selector
        self.order = np.asarray(order, dtype=np.int64)
        self.use_dataset_instruction = use_dataset_instruction
        self.use_text_in_document = use_text_in_document

    def __len__(self) -> int:
        return len(self.order)

    @property
    def epoch(self) -> int:
        return self._groups.epoch

    def set_epoch(self, epoch: int) -> None:
        """Build items for ``epoch`` from now on (the seed's ``dataset.set_epoch``)."""
        self._groups.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, items: Sequence[int]) -> list[dict[str, Any]]:
        n = len(self.order)
        rows = []
        for i in items:
            i = int(i)
            if not -n <= i < n:
                raise IndexError(f"item {i} out of range (dataset has {n})")
            rows.append(int(self.order[i]))
        return [self._item(g) for g in self._groups.__getitems__(rows)]

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
) -> NeMoRetrievalDataset:
    """NeMo Automodel's retrieval dataset factory: groups of 1 positive + ``n_passages - 1`` negatives.

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
        do_shuffle: shuffle the examples once, before the ``max_train_samples`` window (training only; the
            per-epoch order is the sampler's business).
        max_train_samples: keep this many training examples, from ``train_data_select_offset``.
        train_data_select_offset: start of the ``max_train_samples`` window.
        use_dataset_instruction: fill ``query_instruction`` / ``passage_instruction`` from corpus metadata
            (``""`` otherwise, and always for inline data).
        cycle_positive_docs: rotate the positive with the epoch (:meth:`NeMoRetrievalDataset.set_epoch`).
        use_text_in_document: keep the text of documents that have an image (image-only otherwise).
        train_n_passages: the older name of ``n_passages``; wins when given.
        model_type: ``"bi_encoder"`` or ``"cross_encoder"``; items are grouped either way (the
            ``CrossEncoderCollator`` flattens them into one row per pair).
        cache_dir: where converted data is cached (default ``$DENSETUNE_CACHE`` or ``~/.cache/densetune``).

    Returns:
        A :class:`NeMoRetrievalDataset`.

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

    if data_type == "train":
        if do_shuffle:
            random.Random(seed).shuffle(order)
        if max_train_samples is not None:
            start = max(0, train_data_select_offset)
            order = order[start : start + max_train_samples]
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
    groups = RetrievalTrainDataset(store, selector)
    logger.info("created %s dataset with %d examples from %d source(s)", data_type, len(order), len(entries))
    return NeMoRetrievalDataset(
        groups, np.asarray(order, dtype=np.int64), use_dataset_instruction, use_text_in_document
    )
