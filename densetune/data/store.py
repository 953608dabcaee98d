"""The example store: training examples converted once to memory-mapped Arrow, documents resolved lazily.

:func:`load_examples` reads each input (file or BEIR split) with :mod:`densetune.data.formats` and writes
it to ``cache_dir/examples/<key>/``: ``examples.arrow`` (one row per Example: query, ids, task, ..., and the
rows of its documents) and ``docs.arrow`` (the documents of inline data). Documents given by id are stored
as rows of their corpus (itself memory-mapped, see :mod:`densetune.data.corpus`): one million examples with
21 documents by id cost about as much disk as their JSON (566 MB for 560 MB) and almost no RAM. Inline text
is stored as given, so that cache is about the size of the JSONL (1.1x measured), less where passages repeat:
a passage met again is stored once (``_SeenPassages``). The build shows a progress bar and logs a summary
line (examples/s, passages stored, size). The key is the input's path, size
and modification time (and the split); a corpus that changed since invalidates the entry. A second load
only maps the files.

``store[i]`` gives an Example whose id-referenced documents have ``text=""``; ``store.resolve(example)``
fills them, ``store.get(i, resolve=True)`` and ``store.iter(resolve=True)`` do it in bulk (fastest).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from densetune.data import beir
from densetune.data.arrowcache import (
    ArrowWriter,
    cache_key,
    default_cache_dir,
    fingerprint,
    open_table,
    publish_dir,
)
from densetune.data.corpus import Corpus, inline_corpus, load_corpus
from densetune.data.docrows import DOC_SCHEMA, extra_json
from densetune.data.formats import ReadStats, block_items, expand_paths, iter_chunks, jsonl_format
from densetune.data.jsonrecords import count_text_lines
from densetune.data.progress import data_bar
from densetune.data.records import INLINE_CORPUS_ID, Doc, Example
from densetune.errors import DataError

logger = logging.getLogger("densetune.data")

_STRING_COLUMNS = (
    "query_id",
    "query",
    "task",
    "type",
    "prompt",
    "category",
    "query_instruction",
    "passage_instruction",
    "corpus_id",
)
_ROW_LISTS = ("pos_rows", "neg_rows", "hist_rows")
EXAMPLE_SCHEMA = pa.schema(
    [(name, pa.string()) for name in _STRING_COLUMNS]
    + [("line", pa.int64())]
    + [(name, pa.list_(pa.int64())) for name in _ROW_LISTS]
    + [
        ("pos_scores", pa.list_(pa.float64())),
        ("neg_scores", pa.list_(pa.float64())),
        ("answers", pa.list_(pa.string())),
        ("extra", pa.string()),  # Example.extra as JSON text, "" when empty
    ]
)
_MAX_STORED_ERRORS = 1000
# Bytes of JSON lines converted as one piece (a worker process's task): ~4,000 inline examples.
_BLOCK_BYTES = 8 << 20
COLUMNS = (*_STRING_COLUMNS, "line", "source", "n_pos", "n_neg", "n_history", "pos_ids", "neg_ids")


class _Part:
    """One input (file or BEIR split) in the store: its examples table and its inline documents."""

    def __init__(self, path: Path, entry: Path, meta: dict[str, Any], offset: int):
        self.path = path
        self.entry = entry
        self.meta = meta
        table = open_table(entry / "examples.arrow")
        inline = inline_corpus(entry / "docs.arrow")
        self.table = table
        self.inline = inline if len(inline) else None
        self.offset = offset
        rel = meta.get("source_rel") or ""
        self.source_path = str(path / rel) if rel else str(path)

    def __len__(self) -> int:
        return self.table.num_rows


def _list_column(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets from 0, flat values, null mask) of a list column slice."""
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    offsets = arr.offsets.to_numpy()
    offsets = offsets - offsets[0]
    values = arr.flatten().to_numpy(zero_copy_only=False)
    nulls = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(len(arr), dtype=bool)
    return offsets, values, nulls


class ExampleStore:
    """Examples from one or more inputs, memory-mapped; see the module docstring.

    Attributes:
        corpora: the corpora documents are referenced in, by corpus id.
        skipped: invalid records skipped (``skip_invalid=True``), in total.
        skipped_by_file: the same, per input.
        errors: the DataError of each skipped record (up to 1000 per input).
        formats: the detected format of each input.

    Example:
        >>> store = load_examples(["examples/corpus_id/train.json"])
        >>> store[0].positives[0].text  # ""  (document by id, not resolved)
        >>> store.get(0, resolve=True).positives[0].text
    """

    def __init__(self, parts: list[_Part], corpora: dict[str, Corpus]):
        self._parts = parts
        self._starts = [p.offset for p in parts]
        self.corpora = corpora
        self.skipped_by_file = {str(p.path): int(p.meta["skipped"]) for p in parts}
        self.skipped = sum(self.skipped_by_file.values())
        self.errors = [DataError(**e) for p in parts for e in p.meta["errors"]]
        self.formats = {str(p.path): p.meta["format"] for p in parts}
        self.notes: Counter = Counter()
        for p in parts:
            self.notes.update(p.meta.get("notes", {}))
        self._len = sum(len(p) for p in parts)

    def __len__(self) -> int:
        return self._len

    def __reduce__(self) -> Any:
        # Pickle by reference to the cache entries (DataLoader workers re-map them), not by value.
        parts = [(str(p.path), str(p.entry), p.meta, p.offset) for p in self._parts]
        return (_reopen_store, (parts, self.corpora))

    def __repr__(self) -> str:
        return (
            f"ExampleStore({self._len} examples from {len(self._parts)} inputs, corpora={list(self.corpora)})"
        )

    def __getitem__(self, index: int) -> Example:
        return self.get(index)

    def _locate(self, index: int) -> tuple[_Part, int]:
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"example index {index} out of range (store has {self._len})")
        part = self._parts[bisect.bisect_right(self._starts, index) - 1]
        return part, index - part.offset

    def get(self, index: int, *, resolve: bool = False) -> Example:
        """Example ``index``; with ``resolve`` its id-referenced documents come with text (from stored rows)."""
        part, local = self._locate(index)
        return self._decode(part, local, local + 1, resolve)[0]

    def batch(self, start: int, stop: int, *, resolve: bool = False) -> list[Example]:
        """Examples ``start:stop`` decoded together (one Arrow take per corpus: much faster than one by one)."""
        out: list[Example] = []
        index = max(start, 0)
        stop = min(stop, self._len)
        while index < stop:
            part, local = self._locate(index)
            n = min(stop - index, len(part) - local)
            out.extend(self._decode(part, local, local + n, resolve))
            index += n
        return out

    def release_pages(self) -> None:
        """Map the cache files afresh, so the file pages a long pass touched leave this process's RSS.

        A memory-mapped page stays in the process's RSS once read, until the mapping goes; a pass over a
        10M-example cache would otherwise hold the whole cache (~17 GB) as RSS. The kernel keeps the pages
        in its page cache (a re-read is cheap) and can reclaim them. Examples already decoded are unaffected.
        """
        for p in self._parts:
            p.table = open_table(p.entry / "examples.arrow")
            if p.inline is not None:
                known = dict(p.inline._non_empty)  # which columns are all empty: no need to look again
                p.inline = inline_corpus(p.entry / "docs.arrow")
                p.inline._non_empty.update(known)

    def entries(self) -> list[tuple[Path, int, int]]:
        """``(cache entry directory, first index, stop index)`` of each input: where per-input results that
        depend only on the data (a selector's prefilter) can be kept next to the examples."""
        return [(p.entry, p.offset, p.offset + len(p)) for p in self._parts]

    def task_codes(self) -> tuple[np.ndarray, list[str]]:
        """``(codes, names)``: every example's task as an int32 index into ``names`` (no Python string per
        example: Arrow dictionary-encodes the column, so 10M examples cost 40 MB)."""
        names: dict[str, int] = {}
        out = np.zeros(self._len, dtype=np.int32)
        for p in self._parts:
            encoded = p.table.column("task").dictionary_encode().combine_chunks()
            local = [names.setdefault(t, len(names)) for t in encoded.dictionary.to_pylist()]
            idx = encoded.indices.to_numpy(zero_copy_only=False)
            out[p.offset : p.offset + len(p)] = np.asarray(local, dtype=np.int32)[idx] if len(idx) else idx
        return out, list(names)

    def __iter__(self) -> Iterator[Example]:
        return self.iter()

    def iter(self, *, resolve: bool = False, batch_size: int = 1024) -> Iterator[Example]:
        """All examples in order, decoded ``batch_size`` at a time."""
        for start in range(0, self._len, batch_size):
            yield from self.batch(start, start + batch_size, resolve=resolve)

    def _decode(self, part: _Part, start: int, stop: int, resolve: bool) -> list[Example]:
        t = part.table.slice(start, stop - start)
        strings = {name: t.column(name).to_pylist() for name in _STRING_COLUMNS}
        lines = t.column("line").to_numpy()
        lists = {name: _list_column(t.column(name)) for name in (*_ROW_LISTS, "pos_scores", "neg_scores")}
        answers = t.column("answers").to_pylist()
        extras = t.column("extra").to_pylist()
        n = stop - start
        # Gather every document row per table (a corpus, or this part's inline documents), one take each.
        wanted: dict[str, list[np.ndarray]] = {}
        for i in range(n):
            key = strings["corpus_id"][i]
            for name in _ROW_LISTS:
                off, vals, _ = lists[name]
                wanted.setdefault(key, []).append(vals[off[i] : off[i + 1]])
        docs: dict[str, Iterator[Doc]] = {}
        for key, parts in wanted.items():
            rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            if key == INLINE_CORPUS_ID:
                table = part.inline
                if table is None:
                    raise DataError(
                        "store entry has inline examples but no inline documents; clear the cache", part.path
                    )
                docs[key] = iter(table.docs(rows))
            else:
                docs[key] = iter(self.corpora[key].docs(rows, text=resolve))
        out = []
        for i in range(n):
            it = docs[strings["corpus_id"][i]]
            got = []
            for name in _ROW_LISTS:
                off, _, _ = lists[name]
                got.append([next(it) for _ in range(off[i + 1] - off[i])])
            scores = []
            for name in ("pos_scores", "neg_scores"):
                off, vals, nulls = lists[name]
                scores.append(None if nulls[i] else vals[off[i] : off[i + 1]].tolist())
            out.append(
                Example(
                    query_id=strings["query_id"][i],
                    query=strings["query"][i],
                    positives=got[0],
                    negatives=got[1],
                    pos_scores=scores[0],
                    neg_scores=scores[1],
                    task=strings["task"][i],
                    type=strings["type"][i],
                    prompt=strings["prompt"][i],
                    category=strings["category"][i],
                    query_instruction=strings["query_instruction"][i],
                    passage_instruction=strings["passage_instruction"][i],
                    corpus_id=strings["corpus_id"][i],
                    history=got[2],
                    answers=answers[i],
                    source=f"{part.source_path}:{lines[i]}",
                    extra=json.loads(extras[i]) if extras[i] else {},
                )
            )
        return out

    def resolve(self, example: Example) -> Example:
        """A copy of ``example`` whose documents given by id carry their corpus text, title and image.

        Works for any Example (also one changed after ``store[i]``): documents are looked up by id.

        Raises:
            DataError: the example's corpus is not in the store, or an id is not in it (naming id and corpus).
        """
        if example.corpus_id == INLINE_CORPUS_ID:
            return dataclasses.replace(
                example, positives=list(example.positives), negatives=list(example.negatives)
            )
        corpus = self.corpora.get(example.corpus_id)
        if corpus is None:
            raise DataError(
                f"unknown corpus {example.corpus_id!r}; the store has {', '.join(self.corpora) or 'none'}",
                example.source,
            )
        groups = (example.positives, example.negatives, example.history)
        need = [d.id for g in groups for d in g if not d.text and d.id]
        rows = corpus.rows(need)
        if (rows < 0).any():
            bad = need[int(np.flatnonzero(rows < 0)[0])]
            raise DataError(f"unknown document id {bad!r} in corpus {corpus.corpus_id!r}", example.source)
        fetched = iter(corpus.docs(rows))
        filled = [[next(fetched) if not d.text and d.id else d for d in g] for g in groups]
        return dataclasses.replace(example, positives=filled[0], negatives=filled[1], history=filled[2])

    def column(self, name: str) -> list | np.ndarray:
        """One per-example value for every example, cheaply (no documents decoded).

        Names: ``query_id``, ``query``, ``task``, ``type``, ``prompt``, ``query_instruction``,
        ``passage_instruction``, ``corpus_id``, ``source`` (lists of str); ``line``, ``n_pos``, ``n_neg``,
        ``n_history`` (int64 arrays); ``pos_ids``, ``neg_ids`` (lists of lists of document ids).
        """
        if name not in COLUMNS:
            raise KeyError(f"unknown column {name!r}; expected one of {', '.join(COLUMNS)}")
        if name in _STRING_COLUMNS:
            return [v for p in self._parts for v in p.table.column(name).to_pylist()]
        if name == "line":
            return np.concatenate(
                [p.table.column("line").to_numpy() for p in self._parts] or [np.zeros(0, np.int64)]
            )
        if name == "source":
            return [
                f"{p.source_path}:{line}"
                for p in self._parts
                for line in p.table.column("line").to_numpy().tolist()
            ]
        if name.startswith("n_"):
            col = {"n_pos": "pos_rows", "n_neg": "neg_rows", "n_history": "hist_rows"}[name]
            parts = [
                pc.list_value_length(p.table.column(col)).to_numpy().astype(np.int64) for p in self._parts
            ]
            return np.concatenate(parts) if parts else np.zeros(0, np.int64)
        col = "pos_rows" if name == "pos_ids" else "neg_rows"
        out: list[list[str]] = []
        for p in self._parts:
            off, vals, _ = _list_column(p.table.column(col))
            cids = p.table.column("corpus_id").to_pylist()
            for i, cid in enumerate(cids):
                table = p.inline if cid == INLINE_CORPUS_ID else self.corpora[cid]
                out.append(table.ids_at(vals[off[i] : off[i + 1]]))
        return out


def _reopen_store(parts: list[tuple[str, str, dict, int]], corpora: dict[str, Corpus]) -> ExampleStore:
    return ExampleStore([_Part(Path(p), Path(e), meta, off) for p, e, meta, off in parts], corpora)


# ---------------------------------------------------------------------------------------------------------
# Building and loading store entries


def _source_rel(path: Path, split: str) -> tuple[str, list[Path]]:
    """(source path relative to the input, files whose fingerprint keys the entry)."""
    if path.is_dir():
        qrels = beir.qrels_path(path, split)
        return str(qrels.relative_to(path)), [path / "queries.jsonl", qrels]
    return "", [path]


def _list_array(lengths: list[int], values: list[int]) -> pa.ListArray:
    """A list<int64> Arrow array from each row's length and all rows' values, flat."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(np.asarray(lengths, dtype=np.int32), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.asarray(values, dtype=np.int64)))


def _passage_digest(doc: Doc, extra: str) -> bytes:
    """128-bit BLAKE2b of an inline passage's id, text, title, image and extra: what "the same passage" is."""
    key = "\x00".join((doc.id, doc.text, doc.title, doc.image or "", extra))
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class _SeenPassages:
    """Recently stored inline passages, so a passage met again is stored once (a mined negative that recurs).

    A direct-mapped table of ``_SLOTS`` entries: slot = the low bits of the passage's digest
    (:func:`_passage_digest`, its first 8 bytes read little-endian), holding that digest and the row it was
    stored at; a new passage that lands on a taken slot replaces it. Memory is fixed (48 MB of numpy)
    whatever the input's size; a passage repeated across the whole file is found again as long as no other
    passage took its slot in between, so popular passages are stored about once and rare repeats may be
    stored again (never wrongly merged: digests are compared in full).
    """

    _SLOTS = 1 << 21

    def __init__(self) -> None:
        self._digests = np.zeros((self._SLOTS, 2), dtype=np.uint64)
        self._rows = np.full(self._SLOTS, -1, dtype=np.int64)  # -1: empty
        self.reused = 0

    def place(self, digests: np.ndarray, next_row: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, new)`` for passages met in this order (``digests``: one uint64 pair each): the row each
        was stored at before, or, for each new one, the next row from ``next_row`` (remembered).

        The same as asking passage by passage, done in numpy: a passage whose slot no other one in the list
        uses sees the table as it was; those sharing a slot (a repeat within the list, rarely two passages)
        are asked one at a time, in order.
        """
        n = len(digests)
        # the digest's own bits: hash(bytes) is salted per process, which made which passages share a slot
        # (and so what the cache holds) differ from run to run
        slots = (digests[:, 0] & np.uint64(self._SLOTS - 1)).astype(np.int64)
        order = np.argsort(slots, kind="stable")
        same = slots[order][1:] == slots[order][:-1]
        shared = np.zeros(n, dtype=bool)
        shared[order[1:][same]] = True
        shared[order[:-1][same]] = True
        alone = np.flatnonzero(~shared)
        at = slots[alone]
        hit = np.zeros(n, dtype=bool)
        hit[alone] = (self._digests[at] == digests[alone]).all(axis=1) & (self._rows[at] >= 0)
        rows = np.full(n, -1, dtype=np.int64)
        rows[alone] = np.where(hit[alone], self._rows[at], -1)
        earlier = np.full(n, -1, dtype=np.int64)  # a repeat within the list: the passage it repeats
        state: dict[int, tuple[bytes, int, int]] = {}  # slot -> (digest, stored row or -1, list position)
        for k in np.flatnonzero(shared).tolist():
            slot, key = int(slots[k]), digests[k].tobytes()
            held = state.get(slot)
            if held is None:
                held = (self._digests[slot].tobytes(), int(self._rows[slot]), -1)
            if held[0] == key and (held[1] >= 0 or held[2] >= 0):
                hit[k] = True
                rows[k], earlier[k] = held[1], held[2]
            else:
                state[slot] = (key, -1, k)
        new = ~hit
        rows[new] = next_row + np.arange(int(new.sum()), dtype=np.int64)
        repeats = earlier >= 0
        rows[repeats] = rows[earlier[repeats]]
        # the table after the list: every new passage takes its slot, the last one to land there wins
        newest = np.flatnonzero(new)[::-1]
        newest = newest[np.unique(slots[newest], return_index=True)[1]]
        self._digests[slots[newest]] = digests[newest]
        self._rows[slots[newest]] = rows[newest]
        self.reused += int(hit.sum())
        return rows, new


@dataclasses.dataclass
class _Converted:
    """A chunk of examples as Arrow, its inline passages not yet placed (:func:`_place`).

    Made where the records are parsed (a worker process for a block of JSON lines), so that only the
    placing, which depends on every passage stored before, runs in order in the building process.

    Attributes:
        examples: the examples (:data:`EXAMPLE_SCHEMA`); an inline example's row lists index ``docs``.
        inline: per example, whether its rows index ``docs`` (else rows of its corpus).
        docs: every inline example's passages (:data:`DOC_SCHEMA`), a passage listed twice in one example
            (a history row that is also a negative) once.
        digests: :func:`_passage_digest` of each of ``docs``, as two little-endian uint64 (``(n, 2)``).
        read: records read (examples and skipped records).
        errors: ``(message, path, line, field)`` of each invalid record, in file order.
        notes: counts of what was read but not kept (see :class:`~densetune.data.formats.ReadStats`).
    """

    examples: pa.Table
    inline: np.ndarray
    docs: pa.Table
    digests: np.ndarray
    read: int = 0
    errors: list[tuple[str, str | None, int | str | None, str | None]] = dataclasses.field(
        default_factory=list
    )
    notes: Counter = dataclasses.field(default_factory=Counter)


def _convert(examples: list[Example], chunk_rows: list[Any]) -> _Converted:
    """Examples (with their corpus rows, None for inline examples: see ``iter_chunks``) as a :class:`_Converted`."""
    docs: dict[str, list[str]] = {name: [] for name in DOC_SCHEMA.names}
    digests: list[bytes] = []
    lengths: list[list[int]] = [[], [], []]
    values: list[list[int]] = [[], [], []]
    inline = np.zeros(len(examples), dtype=bool)
    for e, (ex, rows) in enumerate(zip(examples, chunk_rows)):
        if rows is not None:
            for k in range(3):
                lengths[k].append(len(rows[k]))
                values[k].extend(rows[k].tolist())
            continue
        inline[e] = True
        listed: dict[int, int] = {}  # a history row that is also a negative is listed once
        for k, group in enumerate((ex.positives, ex.negatives, ex.history)):
            lengths[k].append(len(group))
            for d in group:
                at = listed.get(id(d))
                if at is None:
                    at = listed[id(d)] = len(digests)
                    extra = extra_json(d.extra)
                    digests.append(_passage_digest(d, extra))
                    docs["id"].append(d.id)
                    docs["text"].append(d.text)
                    docs["title"].append(d.title)
                    docs["image"].append(d.image)
                    docs["extra"].append(extra)
                values[k].append(at)
    cols: dict[str, Any] = {name: [getattr(ex, name) for ex in examples] for name in _STRING_COLUMNS}
    cols["line"] = [int(ex.source.rsplit(":", 1)[1]) for ex in examples]
    for name, n, v in zip(_ROW_LISTS, lengths, values):
        cols[name] = _list_array(n, v)
    cols["pos_scores"] = [ex.pos_scores for ex in examples]
    cols["neg_scores"] = [ex.neg_scores for ex in examples]
    cols["answers"] = [ex.answers for ex in examples]
    cols["extra"] = [extra_json(ex.extra) for ex in examples]
    digest_pairs = np.frombuffer(b"".join(digests), dtype="<u8").astype(np.uint64).reshape(-1, 2)
    return _Converted(
        pa.table(cols, schema=EXAMPLE_SCHEMA), inline, pa.table(docs, schema=DOC_SCHEMA), digest_pairs
    )


def _place(conv: _Converted, seen: _SeenPassages, inline_start: int) -> tuple[pa.Table, pa.Table]:
    """Arrow tables (examples, inline documents to append) for a converted chunk: each passage gets the row
    it was stored at before (``seen``) or the next new row, counted from ``inline_start``."""
    rows, new = seen.place(conv.digests, inline_start)
    table = conv.examples
    if conv.inline.any():
        for name in _ROW_LISTS:
            column = table.column(name).combine_chunks()
            local = column.values.to_numpy()
            offsets = column.offsets.to_numpy()
            placed = (
                rows[local]
                if conv.inline.all()
                else np.where(
                    np.repeat(conv.inline, np.diff(offsets)), rows[local] if len(rows) else local, local
                )
            )
            array = pa.ListArray.from_arrays(pa.array(offsets), pa.array(placed, type=pa.int64()))
            table = table.set_column(table.schema.get_field_index(name), name, array)
    return table, conv.docs.filter(pa.array(new))


def _jsonl_blocks(path: Path) -> Iterator[tuple[bytes, int, int]]:
    """``(block, first line, first record index)``: the file in whole lines, about :data:`_BLOCK_BYTES` each."""
    line, index, rest = 1, 0, b""
    with open(path, "rb") as f:
        while True:
            data = f.read(_BLOCK_BYTES)
            if data and hasattr(os, "posix_fadvise"):  # read once: its pages need not fill the page cache
                os.posix_fadvise(f.fileno(), f.tell() - len(data), len(data), os.POSIX_FADV_DONTNEED)
            block = rest + data if rest else data
            cut = block.rfind(b"\n") + 1 if data else len(block)
            if data and not cut:  # one line longer than a block: read on
                rest = block
                continue
            block, rest = block[:cut], block[cut:]
            if block:
                yield block, line, index
                index += count_text_lines(block, path, line)
                line += block.count(b"\n")
            if not data:
                return


def _convert_block(
    path: Path, fmt: str, block: bytes, first_line: int, first_index: int, skip_invalid: bool
) -> _Converted:
    """A block of JSON lines (:func:`_jsonl_blocks`) read and converted: what a worker process does."""
    with gc_paused():
        notes: Counter = Counter()
        examples: list[Example] = []
        errors = []
        for item in block_items(path, fmt, block, first_line, first_index, notes):
            if isinstance(item, DataError):
                errors.append((item.message, item.path, item.line, item.field))
                if not skip_invalid:
                    break
                continue
            examples.append(item)
        conv = _convert(examples, [None] * len(examples))
        conv.read, conv.errors, conv.notes = len(examples) + len(errors), errors, notes
        return conv


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector during a pass over data (the cache build, ``validate``): the pass
    frees what it makes by reference counting, and the collector's runs over its many young objects cost a
    quarter of its CPU. Cycles made meanwhile (an exception's traceback) are collected once it resumes."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def data_workers(workers: int | None = None) -> int:
    """How many processes a pass over data uses (the cache build, the prefilter scan): ``workers``, or the
    CPUs this process may use (up to 8); 1 in a daemonic process (a DataLoader or Pool worker may not start
    processes of its own)."""
    if multiprocessing.current_process().daemon:
        return 1
    if workers is not None:
        return max(1, int(workers))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _converted_blocks(path: Path, fmt: str, skip_invalid: bool, workers: int) -> Iterator[_Converted]:
    """Every block of a JSON-lines file converted, in file order; by ``workers`` processes when the file
    spans several blocks. The blocks and what comes of them are the same whatever ``workers`` is, and so is
    the cache."""
    blocks = _jsonl_blocks(path)
    if workers <= 1 or path.stat().st_size <= 2 * _BLOCK_BYTES or sys.platform != "linux":
        for block in blocks:
            yield _convert_block(path, fmt, *block, skip_invalid)
        return
    # fork (Linux's default, as torch's DataLoader workers): spawn would run the caller's script again in
    # each worker, which breaks any script that calls load_examples outside `if __name__ == "__main__"`.
    # A worker only parses, converts and hashes, so the threads of the parent it does not inherit (torch's)
    # are never missed.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    try:
        pending: collections.deque = collections.deque()
        for block in blocks:
            pending.append(pool.submit(_convert_block, path, fmt, *block, skip_invalid))
            if len(pending) > 2 * workers:  # bounded look-ahead: memory is a few blocks per worker
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _read_converted(
    path: Path,
    split: str,
    skip_invalid: bool,
    root: Path,
    stats: ReadStats,
    corpora: dict[str, Corpus],
    workers: int,
) -> Iterator[_Converted]:
    """The input's examples converted, chunk by chunk in file order; ``stats`` and ``corpora`` filled as
    :func:`~densetune.data.formats.iter_chunks` fills them."""
    fmt = jsonl_format(path)
    if fmt is None:
        for chunk in iter_chunks(path, split=split, skip_invalid=skip_invalid, stats=stats, cache_dir=root):
            corpora.update(chunk.corpora)
            with gc_paused():
                conv = _convert(chunk.examples, chunk.rows)
            yield conv
        return
    stats.formats[str(path)] = fmt
    for conv in _converted_blocks(path, fmt, skip_invalid, workers):
        errors = [DataError(*e) for e in conv.errors]
        if errors and not skip_invalid:
            raise errors[0]
        stats.skipped += len(errors)
        stats.errors.extend(errors)
        stats.notes.update(conv.notes)
        stats.read += conv.examples.num_rows
        yield conv


def _build_entry(
    path: Path, split: str, skip_invalid: bool, root: Path, out: Path, rel: str, workers: int
) -> None:
    stats = ReadStats()
    examples = ArrowWriter(out / "examples.arrow", EXAMPLE_SCHEMA)
    inline = ArrowWriter(out / "docs.arrow", DOC_SCHEMA)
    corpora: dict[str, Corpus] = {}
    seen = _SeenPassages()
    bar = data_bar("cache", path if path.is_file() else None)
    started = time.perf_counter()
    try:
        for conv in _read_converted(path, split, skip_invalid, root, stats, corpora, workers):
            with gc_paused():
                ex_table, doc_table = _place(conv, seen, inline.rows)
                examples.write(ex_table)
                inline.write(doc_table)
            bar.update(ex_table.num_rows)
    finally:
        bar.close()
        n = examples.close()
        inline.close()
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    logger.info(
        "cached %s: %d examples in %.1f s (%.0f examples/s, %d process%s), %d inline passages stored (%d "
        "repeats stored once), %.0f MB in %s",
        path,
        n,
        seconds,
        n / max(seconds, 1e-9),
        workers,
        "" if workers == 1 else "es",
        inline.rows,
        seen.reused,
        size / 2**20,
        out.parent,
    )
    meta = {
        "format": stats.formats.get(str(path), ""),
        "n": n,
        "skipped": stats.skipped,
        "errors": [
            {"message": e.message, "path": e.path, "line": e.line, "field": e.field}
            for e in stats.errors[:_MAX_STORED_ERRORS]
        ],
        "notes": dict(stats.notes),
        "corpora": {
            cid: {"path": str(c.path.resolve()) if c.path else "", "key": c.key} for cid, c in corpora.items()
        },
        "source_rel": rel,
        "split": split,
    }
    (out / "meta.json").write_text(json.dumps(meta))


def _open_entry(
    path: Path, entry: Path, meta: dict, offset: int, root: Path
) -> tuple[_Part, dict[str, Corpus]] | None:
    """Map a cached entry; None when a corpus it refers to changed since (the entry must be rebuilt)."""
    corpora = {}
    for cid, info in meta["corpora"].items():
        corpus = load_corpus(info["path"], cache_dir=root, corpus_id=cid)
        if corpus.key != info["key"]:
            return None
        corpora[cid] = corpus
    return _Part(path, entry, meta, offset), corpora


def load_examples(
    paths: str | Path | Iterable[str | Path],
    *,
    skip_invalid: bool = False,
    cache_dir: str | Path | None = None,
    split: str = "train",
    workers: int | None = None,
) -> ExampleStore:
    """Load training data into a memory-mapped :class:`ExampleStore`, converting (and caching) on first use.

    Args:
        paths: files, directories (expanded with :func:`densetune.data.formats.expand_paths`), globs, or
            BEIR dataset directories, in any supported format.
        skip_invalid: skip invalid records and count them (a warning logs the totals) instead of raising.
        cache_dir: cache root (default ``$DENSETUNE_CACHE`` or ``~/.cache/densetune``).
        split: qrels split for BEIR directories.
        workers: processes converting a JSON-lines file larger than a few blocks, on Linux (default: the
            CPUs this process may use, up to 8); the cache is the same whatever their number.

    Raises:
        DataError: the first invalid record, naming file, line and field (unless ``skip_invalid``), or a
            problem with a whole file (empty, binary, bad corpus metadata), which no flag skips.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    (root / "examples").mkdir(parents=True, exist_ok=True)
    parts: list[_Part] = []
    corpora: dict[str, Corpus] = {}
    offset = 0
    for path in expand_paths(paths):
        if path.is_dir() and not beir.is_beir_dir(path):
            raise DataError(
                "this is a corpus directory, not training data; pass the corpus-id JSON that lists it", path
            )
        rel, key_files = _source_rel(path, split)
        key = cache_key(
            "examples", str(path.resolve()), split if path.is_dir() else "", fingerprint(key_files)
        )
        entry = root / "examples" / key
        opened = None
        if (entry / "meta.json").is_file():
            meta = json.loads((entry / "meta.json").read_text())
            opened = _open_entry(path, entry, meta, offset, root)
            if opened is None:
                shutil.rmtree(entry, ignore_errors=True)
        if opened is None:
            tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=root / "examples"))
            try:
                _build_entry(path, split, skip_invalid, root, tmp, rel, data_workers(workers))
                publish_dir(tmp, entry)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            meta = json.loads((entry / "meta.json").read_text())
            opened = _open_entry(path, entry, meta, offset, root)
            if opened is None:
                raise DataError("a corpus changed while it was being read; load again", path)
        part, part_corpora = opened
        if part.meta["skipped"] and not skip_invalid:
            raise DataError(**part.meta["errors"][0])
        for cid, corpus in part_corpora.items():
            if cid in corpora and corpora[cid].key != corpus.key:
                raise DataError(
                    f"corpus_id {cid!r} names two different corpora ({corpora[cid].path} and {corpus.path})",
                    path,
                )
            corpora.setdefault(cid, corpus)
        parts.append(part)
        offset += len(part)
    store = ExampleStore(parts, corpora)
    if store.skipped:
        per_file = ", ".join(f"{p}: {n}" for p, n in store.skipped_by_file.items() if n)
        logger.warning(
            "skipped %d invalid records of %d (%s); first: %s",
            store.skipped,
            store.skipped + len(store),
            per_file,
            store.errors[0] if store.errors else "",
        )
    for note, count in store.notes.items():  # data read but not kept: said out loud, never silent
        logger.warning("%s: %d", note, count)
    return store
