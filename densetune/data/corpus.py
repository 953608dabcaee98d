"""Corpora: documents looked up by id, memory-mapped from an Arrow cache; and how a document becomes text.

A corpus (a NeMo corpus directory with ``merlin_metadata.json``, a BEIR ``corpus.jsonl``, or a single
``.jsonl`` / ``.parquet`` file of ``id, text[, title]`` rows) is converted once into an Arrow IPC file plus
an open-addressing hash index over the ids (two ``.npy`` files), all memory-mapped. A corpus of tens of
millions of passages then costs disk, not RAM: ``get(id)`` touches a few pages, and nothing is loaded up
front. The conversion is cached under ``cache_dir/corpora/<key>``, keyed by the source files' paths, sizes
and modification times, so a second load takes milliseconds.

Text rendering: :func:`doc_text` is the one place that turns a :class:`Doc` into the string a model sees:
``title + " " + text`` when the title is non-empty, else ``text`` (the BEIR convention).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from densetune.data.records import INLINE_CORPUS_ID, Doc
from densetune.errors import DataError

CACHE_VERSION = 3  # 2: examples carry `category`; 3: corpus rows keep their other fields in `extra`
MERLIN_METADATA = "merlin_metadata.json"
CORPUS_SUFFIXES = (".parquet", ".jsonl", ".json")
# Arrow record batches are written up to this many bytes, so a column is a handful of chunks and a
# take() over it is a few vectorised calls (pyarrow's own ChunkedArray.take is slow with many chunks).
_BATCH_BYTES = 64 << 20
_READ_ROWS = 65536  # rows per batch read from a corpus source
# Every document table (corpora and the documents of inline training data): ``extra`` holds the source
# row's other fields as a JSON object ("" when it has none), so nothing a corpus row carries is lost.
DOC_SCHEMA = pa.schema([(name, pa.string()) for name in ("id", "text", "title", "image", "extra")])
_ID_KEYS = ("_id", "id", "docid", "doc_id")
_TEXT_KEYS = ("text", "contents")


def extra_json(fields: dict[str, Any]) -> str:
    """A row's other fields as the ``extra`` column's JSON text; "" when none carries a value.

    Fields that are null or an empty object / list / string (BEIR's ``"metadata": {}``) carry nothing and
    are not kept; values JSON cannot hold (dates, bytes from Parquet) are kept as their string form.
    """
    kept = {k: v for k, v in fields.items() if carries_value(v)}
    return json.dumps(kept, ensure_ascii=False, default=str) if kept else ""


def carries_value(value: Any) -> bool:
    """False for a field that says nothing: null or an empty object / list / string (0 and false do say)."""
    return value is not None and not (isinstance(value, (dict, list, str)) and not value)


def doc_text(doc: Doc) -> str:
    """The text a model sees for a document: ``"{title} {text}"`` when it has a title, else ``text``.

    This is the BEIR convention (and LLM-Embedder's ``key_template="{title} {text}"``). Formats that cannot
    carry a title separately (FlagEmbedding, LLM-Embedder, SBERT) are written with this rendering.
    """
    return f"{doc.title} {doc.text}" if doc.title else doc.text


def default_cache_dir() -> Path:
    """``$DENSETUNE_CACHE`` if set, else ``~/.cache/densetune``."""
    env = os.environ.get("DENSETUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "densetune"


def fingerprint(paths: Iterable[Path]) -> list[list[Any]]:
    """``[absolute path, size, mtime_ns]`` of each file: what a cached conversion is keyed by."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return out


def cache_key(*parts: Any) -> str:
    """A short stable hex key for JSON-serialisable ``parts``."""
    blob = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:20]


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished cache directory into place; if another process got there first, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def jtype(value: Any) -> str:
    """JSON type name of a parsed value, for messages (``"a number (5)"``, ``"null"``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})" if len(value) <= 40 else "a string"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_SURROGATE = re.compile("[\ud800-\udfff]")


def may_hold_surrogate(raw: str) -> bool:
    """Cheap pre-check on raw JSON text: only a ``\\uD8xx``-``\\uDFxx`` escape can decode to a lone surrogate."""
    return "\\ud" in raw or "\\uD" in raw


def find_lone_surrogate(value: Any, where: str = "") -> str | None:
    """Dotted path of the first string in a parsed JSON value holding a lone surrogate (invalid Unicode)."""
    if isinstance(value, str):
        return where if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            if _SURROGATE.search(k):
                return where or "(a key)"
            found = find_lone_surrogate(v, f"{where}.{k}" if where else k)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = find_lone_surrogate(v, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def parse_json_line(text: str, path: str | Path, line: int | str, expected: str) -> Any:
    """``json.loads`` of one line with every failure as a DataError (syntax, nesting depth, invalid Unicode)."""
    try:
        obj = json.loads(text.rstrip())
    except json.JSONDecodeError as err:
        raise DataError(
            f"invalid JSON: {err.msg} (column {err.colno}); expected {expected}", path, line
        ) from None
    except RecursionError:
        raise DataError(f"invalid JSON: nested too deeply; expected {expected}", path, line) from None
    if may_hold_surrogate(text):
        where = find_lone_surrogate(obj)
        if where is not None:
            raise DataError(
                "lone surrogate escape (\\uD800-\\uDFFF): not valid Unicode; expected valid text",
                path,
                line,
                where or None,
            )
    return obj


def iter_text_lines(path: str | Path) -> Iterator[tuple[int, str | DataError]]:
    """Yield ``(line number, text)`` for each non-blank line of a UTF-8 file, decoding line by line.

    A line that is not UTF-8 yields a :class:`DataError` naming the line and byte instead of text, so a
    reader can report it and go on. A UTF-8 byte-order mark on line 1 is dropped.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                col = len(raw[: err.start].decode("utf-8", errors="replace")) + 1
                yield (
                    lineno,
                    DataError(
                        f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {col}); expected UTF-8 text "
                        "(re-save the file as UTF-8)",
                        path,
                        lineno,
                    ),
                )
                continue
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            if line.strip():
                yield lineno, line


# ---------------------------------------------------------------------------------------------------------
# Id hashing and the open-addressing index (vectorised with numpy; the same hash in pure Python for one id)

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1


def hash_id(doc_id: str) -> int:
    """64-bit FNV-1a of the UTF-8 bytes of ``doc_id`` (equal to :func:`hash_ids` element-wise)."""
    h = _FNV_OFFSET
    for b in doc_id.encode("utf-8"):
        h = ((h ^ b) * _FNV_PRIME) & _MASK64
    return h


def hash_ids(values: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
    """64-bit FNV-1a of each string, vectorised: one numpy pass per byte position, longest strings first."""
    if isinstance(values, pa.ChunkedArray):
        parts = [hash_ids(c) for c in values.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    arr = values if isinstance(values, pa.Array) else pa.array(values, type=pa.string())
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.uint64)
    off_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=off_type)[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    lens = np.diff(offsets)
    order = np.argsort(-lens, kind="stable")
    starts = offsets[:-1][order]
    neg_sorted = -lens[order]
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    prime = np.uint64(_FNV_PRIME)
    for j in range(int(lens.max())):
        count = int(np.searchsorted(neg_sorted, -j, side="left"))  # strings longer than j
        seg = h[:count]
        seg ^= data[starts[:count] + j]
        seg *= prime
    out = np.empty(n, dtype=np.uint64)
    out[order] = h
    return out


class _Column:
    """A memory-mapped Arrow column with a fast positional ``take`` (grouping rows by chunk)."""

    def __init__(self, column: pa.ChunkedArray):
        self.chunks = [c for c in column.chunks if len(c)] or [pa.array([], type=column.type)]
        self.bounds = np.cumsum([0] + [len(c) for c in self.chunks])

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def take_arrow(self, rows: np.ndarray) -> pa.Array:
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.chunks) == 1:
            return self.chunks[0].take(pa.array(rows))
        which = np.searchsorted(self.bounds, rows, side="right") - 1
        if len(rows) and (which == which[0]).all():
            return self.chunks[which[0]].take(pa.array(rows - self.bounds[which[0]]))
        order = np.argsort(which, kind="stable")
        pieces = []
        for c in np.unique(which):
            sel = order[which[order] == c]
            pieces.append(self.chunks[c].take(pa.array(rows[sel] - self.bounds[c])))
        merged = pa.concat_arrays(pieces)
        inverse = np.empty(len(rows), dtype=np.int64)
        inverse[order] = np.arange(len(rows))
        return merged.take(pa.array(inverse))

    def take(self, rows: np.ndarray) -> list:
        if len(rows) == 0:
            return []
        if len(self.chunks) > 1 and len(rows) <= 64:  # a few values: scalar access beats per-chunk takes
            rows = np.asarray(rows, dtype=np.int64)
            which = (np.searchsorted(self.bounds, rows, side="right") - 1).tolist()
            local = (rows - self.bounds[which]).tolist()
            return [self.chunks[c][i].as_py() for c, i in zip(which, local)]
        return self.take_arrow(rows).to_pylist()


class IdIndex:
    """Open-addressing (linear probing) hash table from document id to row, stored as two numpy arrays.

    ``slots`` (int64, a power of two at least twice the number of ids, -1 = empty) holds rows;
    ``hashes`` (uint64, one per row) holds each row's id hash. Both are saved as ``.npy`` and memory-mapped.
    A hit is confirmed against the id string itself, so a hash collision never returns a wrong row.
    """

    def __init__(self, slots: np.ndarray, hashes: np.ndarray, ids: _Column):
        # Plain ndarray views of the (possibly memory-mapped) arrays: np.memmap indexing is slow.
        self.slots = np.asarray(slots)
        self.hashes = np.asarray(hashes)
        self.ids = ids
        self.mask = len(slots) - 1

    @classmethod
    def build(cls, ids: _Column) -> tuple[IdIndex, list[tuple[int, int]]]:
        """Index every id; returns the index and ``(first row, duplicate row)`` for each repeated id."""
        n = len(ids)
        hashes = np.concatenate([hash_ids(c) for c in ids.chunks]) if n else np.zeros(0, np.uint64)
        size = 1 << max(3, (2 * n - 1).bit_length())
        mask = size - 1
        slots = np.full(size, -1, dtype=np.int64)
        pos = (hashes & np.uint64(mask)).astype(np.int64)
        pending = np.arange(n, dtype=np.int64)
        duplicates: list[tuple[int, int]] = []
        while pending.size:
            p = pos[pending]
            occupant = slots[p]
            free = occupant < 0
            done = np.zeros(len(pending), dtype=bool)
            same = ~free & (hashes[np.maximum(occupant, 0)] == hashes[pending])
            if same.any():
                idx = np.flatnonzero(same)
                equal = np.asarray(
                    pc.equal(ids.take_arrow(pending[idx]), ids.take_arrow(occupant[idx])).to_numpy(
                        zero_copy_only=False
                    )
                )
                for k in idx[equal]:
                    duplicates.append((int(occupant[k]), int(pending[k])))
                done[idx[equal]] = True
            free_idx = np.flatnonzero(free)
            _, first = np.unique(p[free_idx], return_index=True)  # lowest row wins each contested slot
            winners = free_idx[first]
            slots[p[winners]] = pending[winners]
            done[winners] = True
            # Rows that found their slot taken move on; rows that lost a race for a free slot look at the
            # same slot again (now holding the winner, which may be their duplicate).
            advance = pending[~free & ~done]
            pos[advance] = (pos[advance] + 1) & mask
            pending = pending[~done]
        duplicates.sort(key=lambda d: d[1])
        return cls(slots, hashes, ids), duplicates

    def save(self, directory: Path) -> None:
        np.save(directory / "slots.npy", self.slots)
        np.save(directory / "hashes.npy", self.hashes)

    @classmethod
    def load(cls, directory: Path, ids: _Column) -> IdIndex:
        return cls(
            np.load(directory / "slots.npy", mmap_mode="r"),
            np.load(directory / "hashes.npy", mmap_mode="r"),
            ids,
        )

    def lookup(self, doc_ids: list[str]) -> np.ndarray:
        """Row of each id, or -1 for an id that is not in the corpus."""
        m = len(doc_ids)
        arr = pa.array(doc_ids, type=pa.string())
        if m <= 32:  # scalar probing beats numpy's per-call overhead for a handful of ids
            h = np.array([hash_id(d) for d in doc_ids], dtype=np.uint64)
            rows = np.array([self._probe_hash(int(x)) for x in h], dtype=np.int64)
        else:
            h = hash_ids(arr)
            slots, hashes = self.slots, self.hashes
            rows = np.full(m, -1, dtype=np.int64)
            pos = (h & np.uint64(self.mask)).astype(np.int64)
            pending = np.arange(m)
            while pending.size:
                r = slots[pos[pending]]
                empty = r < 0
                hit = ~empty & (hashes[np.maximum(r, 0)] == h[pending])
                rows[pending[hit]] = r[hit]
                pending = pending[~(empty | hit)]
                pos[pending] = (pos[pending] + 1) & self.mask
        found = np.flatnonzero(rows >= 0)
        if found.size:
            # Confirm against the strings: a 64-bit collision must not map an unknown id to a wrong row.
            same = pc.equal(self.ids.take_arrow(rows[found]), arr.take(pa.array(found)))
            for k in found[~same.to_numpy(zero_copy_only=False)].tolist():
                rows[k] = self._probe_exact(doc_ids[k], int(h[k]))
        return rows

    def _probe_hash(self, h: int) -> int:
        pos = h & self.mask
        while True:
            r = int(self.slots[pos])
            if r < 0 or int(self.hashes[r]) == h:
                return r
            pos = (pos + 1) & self.mask

    def _probe_exact(self, doc_id: str, h: int) -> int:
        """Scalar probe for one id, confirming each same-hash candidate against the id string."""
        pos = h & self.mask
        while True:
            r = int(self.slots[pos])
            if r < 0:
                return -1
            if int(self.hashes[r]) == h and self.ids.take(np.array([r]))[0] == doc_id:
                return r
            pos = (pos + 1) & self.mask


# ---------------------------------------------------------------------------------------------------------
# The Corpus object


class CorpusError(DataError):
    """Every problem found in one corpus (``errors``); ``str()`` is the first, with a count of the rest."""

    def __init__(self, errors: list[DataError]):
        self.errors = errors
        first = errors[0]
        more = f" (and {len(errors) - 1} more problems in this corpus)" if len(errors) > 1 else ""
        super().__init__(first.message + more, first.path, first.line, first.field)


@dataclass
class _CorpusFiles:
    """Where a corpus comes from: its id, its metadata, its data files, and what its cache is keyed by."""

    path: Path
    corpus_id: str
    metadata: dict[str, Any]
    data_files: list[Path]
    key_files: list[Path]


class Corpus:
    """Documents by id, memory-mapped.

    Attributes:
        corpus_id: the corpus' id (``merlin_metadata.json`` ``corpus_id``, the BEIR directory name, or the
            file stem); ``"__inline__"`` for the documents of inline training data.
        metadata: the corpus' ``merlin_metadata.json`` (``class``, ``corpus_id``, and optionally
            ``query_instruction``, ``passage_instruction``, ``task_type``); ``{}`` for other sources.
        path: the directory or file it was read from.
        table: the Arrow table (``id``, ``text``, ``title``, ``image``, ``extra``: :data:`DOC_SCHEMA`).

    Example:
        >>> corpus = load_corpus("examples/corpus_id/wiki")
        >>> corpus.get("wiki-3").text
    """

    def __init__(
        self,
        table: pa.Table,
        corpus_id: str,
        metadata: dict[str, Any] | None = None,
        path: str | Path | None = None,
        index_dir: str | Path | None = None,
        key: str = "",
        arrow_path: str | Path | None = None,
    ):
        self.table = table
        self.corpus_id = corpus_id
        self.metadata = dict(metadata or {})
        self.path = Path(path) if path is not None else None
        self.key = key
        self._columns = {name: _Column(table.column(name)) for name in table.column_names}
        self._index_dir = Path(index_dir) if index_dir is not None else None
        self._arrow_path = Path(arrow_path) if arrow_path is not None else None
        self._index: IdIndex | None = None
        self._non_empty: dict[str, bool] = {}

    @classmethod
    def open(
        cls,
        arrow_path: str | Path,
        corpus_id: str,
        metadata: dict[str, Any] | None = None,
        path: str | Path | None = None,
        index_dir: str | Path | None = None,
        key: str = "",
    ) -> Corpus:
        """Memory-map a converted corpus (``docs.arrow`` and, in ``index_dir``, its id index)."""
        return cls(open_table(Path(arrow_path)), corpus_id, metadata, path, index_dir, key, arrow_path)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Pickle by reference to the memory-mapped files (DataLoader workers re-map them), not by value.
        if self._arrow_path is None:
            return super().__reduce_ex__(protocol)
        args = (str(self._arrow_path), self.corpus_id, self.metadata, self.path, self._index_dir, self.key)
        return (Corpus.open, args)

    def _has(self, name: str) -> bool:
        """Whether any document has a non-empty ``name`` column (so all-empty titles cost no take)."""
        if name not in self._non_empty:
            cols = self._columns.get(name)
            self._non_empty[name] = cols is not None and any(
                (pc.max(pc.binary_length(c)).as_py() or 0) > 0 for c in cols.chunks
            )
        return self._non_empty[name]

    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        return f"Corpus({self.corpus_id!r}, {len(self)} documents, path={str(self.path)!r})"

    @property
    def index(self) -> IdIndex:
        if self._index is None:
            if self._index_dir is not None and (self._index_dir / "slots.npy").is_file():
                self._index = IdIndex.load(self._index_dir, self._columns["id"])
            else:
                self._index, _ = IdIndex.build(self._columns["id"])
        return self._index

    @property
    def ids(self) -> list[str]:
        """All document ids in corpus order (materialised as a list; use ``table.column("id")`` for Arrow)."""
        return self.table.column("id").to_pylist()

    def rows(self, doc_ids: list[str]) -> np.ndarray:
        """Row of each id (int64), -1 for ids the corpus does not have. Vectorised; use it for many ids."""
        return self.index.lookup(list(doc_ids))

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and bool(self.rows([doc_id])[0] >= 0)

    def get(self, doc_id: str) -> Doc:
        """The document with this id.

        Raises:
            DataError: the id is not in the corpus (naming the id, the corpus id and its path).
        """
        row = self.rows([str(doc_id)])[0]
        if row < 0:
            raise DataError(
                f"unknown document id {doc_id!r} in corpus {self.corpus_id!r}", self.path, field="id"
            )
        return self.docs(np.array([row]))[0]

    def ids_at(self, rows: np.ndarray) -> list[str]:
        """Document ids at these rows (in order)."""
        return self._columns["id"].take(np.asarray(rows, dtype=np.int64))

    def docs(self, rows: np.ndarray, *, text: bool = True) -> list[Doc]:
        """Documents at these rows (in order). With ``text=False`` only ids are filled (cheap)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return []
        cols = self._columns
        ids = cols["id"].take(rows)
        if not text:
            return [Doc(id=i) for i in ids]
        texts = cols["text"].take(rows)
        n = len(rows)
        titles = cols["title"].take(rows) if self._has("title") else [""] * n
        images = cols["image"].take(rows) if self._has("image") else [""] * n
        if self._has("extra"):
            extras = [json.loads(e) if e else {} for e in cols["extra"].take(rows)]
            return [
                Doc(id=a, text=b, title=c, image=d, extra=e)
                for a, b, c, d, e in zip(ids, texts, titles, images, extras)
            ]
        return [Doc(id=a, text=b, title=c, image=d) for a, b, c, d in zip(ids, texts, titles, images)]

    def __iter__(self) -> Iterator[Doc]:
        for start in range(0, len(self), 8192):
            yield from self.docs(np.arange(start, min(start + 8192, len(self))))


# ---------------------------------------------------------------------------------------------------------
# Reading corpus sources


def read_merlin_metadata(corpus_dir: str | Path) -> dict[str, Any]:
    """Read and check a NeMo corpus directory's ``merlin_metadata.json``.

    Raises:
        DataError: the file is missing, is not valid JSON, is not an object, or lacks a string ``class`` or a
            non-empty string ``corpus_id``; optional instructions must be strings.
    """
    path = Path(corpus_dir) / MERLIN_METADATA
    expected = 'expected a JSON object such as {"class": "TextQADataset", "corpus_id": "wiki"}'
    if not path.is_file():
        raise DataError(f"corpus directory has no {MERLIN_METADATA}; {expected}", path)
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError("not valid UTF-8; expected UTF-8 JSON", path) from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"invalid JSON: {err.msg} (column {err.colno}); {expected}", path, err.lineno
        ) from None
    if not isinstance(meta, dict):
        raise DataError(f"got {jtype(meta)}; {expected}", path, 1)
    if not isinstance(meta.get("corpus_id"), str) or not meta["corpus_id"].strip():
        what = "missing" if "corpus_id" not in meta else f"got {jtype(meta['corpus_id'])}"
        raise DataError(f"{what}; expected the corpus id as a non-empty string", path, 1, "corpus_id")
    if not isinstance(meta.get("class"), str):
        what = "missing" if "class" not in meta else f"got {jtype(meta['class'])}"
        raise DataError(
            f"{what}; expected the dataset class name as a string, e.g. TextQADataset", path, 1, "class"
        )
    for key in ("query_instruction", "passage_instruction", "task_type"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], str):
            raise DataError(f"got {jtype(meta[key])}; expected a string", path, 1, key)
    return meta


def _corpus_files(path: Path, corpus_id: str | None) -> _CorpusFiles:
    if not path.exists():
        raise DataError("corpus not found; expected a corpus directory or a .jsonl/.parquet file", path)
    if path.is_file():
        if path.suffix not in CORPUS_SUFFIXES:
            raise DataError(
                f"unsupported corpus file type {path.suffix!r}; expected .jsonl, .json or .parquet", path
            )
        return _CorpusFiles(path, corpus_id or path.stem, {}, [path], [path])
    if (path / MERLIN_METADATA).is_file() or not (path / "corpus.jsonl").is_file():
        meta = read_merlin_metadata(path)
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix in CORPUS_SUFFIXES
            and p.name != MERLIN_METADATA
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(
                "corpus directory has no data files; expected *.parquet or *.jsonl with id and text", path
            )
        return _CorpusFiles(path, meta["corpus_id"], meta, files, [path / MERLIN_METADATA, *files])
    beir = path / "corpus.jsonl"  # BEIR layout
    return _CorpusFiles(path, corpus_id or path.name, {}, [beir], [beir])


def _normalise_batch(
    batch: pa.RecordBatch | pa.Table, path: Path, first_row: int
) -> tuple[pa.Table, list[DataError]]:
    """Rename/cast a parquet batch to (id, text, title, image) strings; report nulls and wrong types."""
    names = batch.schema.names
    errors: list[DataError] = []
    id_name = next((n for n in ("id", "_id", "docid", "doc_id") if n in names), None)
    text_name = next((n for n in _TEXT_KEYS if n in names), None)
    if id_name is None or text_name is None:
        missing = "id" if id_name is None else "text"
        raise DataError(
            f"no {missing!r} column (columns: {', '.join(names)}); expected id and text columns",
            path,
            field=missing,
        )
    table = pa.table(batch) if isinstance(batch, pa.RecordBatch) else batch
    cols = {}
    for out, name, required in (
        ("id", id_name, True),
        ("text", text_name, True),
        ("title", "title", False),
        ("image", "image", False),
    ):
        if name not in names:
            cols[out] = pa.array([""] * table.num_rows, type=pa.string())
            continue
        col = table.column(name)
        if out != "id" and not (
            pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type)
        ):
            raise DataError(f"column has type {col.type}; expected strings", path, field=name)
        if out == "id" and not (
            pa.types.is_string(col.type)
            or pa.types.is_large_string(col.type)
            or pa.types.is_integer(col.type)
        ):
            raise DataError(f"column has type {col.type}; expected string or integer ids", path, field=name)
        col = col.cast(pa.string())
        if col.null_count:
            nulls = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
            if required:
                for k in nulls[:20]:
                    errors.append(
                        DataError(f"null {out}; expected a string", path, f"row {first_row + int(k)}", name)
                    )
            col = col.fill_null("")
        cols[out] = col
    others = [n for n in names if n not in (id_name, text_name, "title", "image")]
    if others:
        cols["extra"] = pa.array([extra_json(row) for row in table.select(others).to_pylist()], pa.string())
    else:
        cols["extra"] = pa.array([""] * table.num_rows, type=pa.string())
    return pa.table(cols, schema=DOC_SCHEMA), errors


def _parquet_batches(path: Path, errors: list[DataError]) -> Iterator[pa.Table]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"cannot read Parquet file: {err}", path) from None
    row = 0
    for batch in pf.iter_batches(batch_size=_READ_ROWS):
        table, errs = _normalise_batch(batch, path, row)
        errors.extend(errs)
        row += batch.num_rows
        yield table


def _jsonl_batches(path: Path, errors: list[DataError]) -> Iterator[pa.Table]:
    """Corpus rows from JSON lines, one error per bad line (also reads a .json holding one JSON list)."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
    if head.startswith(b"["):
        try:
            rows = parse_json_line(path.read_bytes().decode("utf-8"), path, None, "a JSON list of documents")
        except UnicodeDecodeError:
            raise DataError("not valid UTF-8; expected UTF-8 JSON", path) from None
        records: Iterable[tuple[int | str, Any]] = ((f"record {i}", r) for i, r in enumerate(rows))
    else:
        records = ((n, x) for n, x in iter_text_lines(path))
    buf: dict[str, list[str]] = {name: [] for name in DOC_SCHEMA.names}
    for where, item in records:
        if isinstance(item, DataError):
            errors.append(item)
            continue
        if isinstance(item, str):
            try:
                item = parse_json_line(item, path, where, "one document object per line")
            except DataError as err:
                errors.append(err)
                continue
        row = _check_doc_row(item, path, where, errors)
        if row is None:
            continue
        for k, v in zip(DOC_SCHEMA.names, row):
            buf[k].append(v)
        if len(buf["id"]) >= _READ_ROWS:
            yield pa.table(buf, schema=DOC_SCHEMA)
            buf = {k: [] for k in buf}
    if buf["id"]:
        yield pa.table(buf, schema=DOC_SCHEMA)


def _check_doc_row(
    item: Any, path: Path, where: int | str, errors: list[DataError]
) -> tuple[str, str, str, str, str] | None:
    """``(id, text, title, image, extra JSON)`` of one JSON corpus row, or None after recording its error."""
    if not isinstance(item, dict):
        errors.append(
            DataError(f"got {jtype(item)}; expected a document object with id and text", path, where)
        )
        return None
    id_key = next((k for k in _ID_KEYS if k in item), None)
    doc_id = item[id_key] if id_key is not None else None
    if doc_id is None or isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or doc_id == "":
        what = "missing" if doc_id is None else f"got {jtype(doc_id)}"
        errors.append(
            DataError(
                f"{what}; expected the document id as a non-empty string",
                path,
                where,
                "_id" if "_id" in item else "id",
            )
        )
        return None
    text_key = next((k for k in _TEXT_KEYS if k in item), "text")
    text = item.get(text_key)
    if not isinstance(text, str):
        what = "missing" if text is None and "text" not in item else f"got {jtype(text)}"
        errors.append(DataError(f"{what}; expected the document text as a string", path, where, "text"))
        return None
    title = item.get("title") or ""
    image = item.get("image") or ""
    for name, value in (("title", title), ("image", image)):
        if not isinstance(value, str):
            errors.append(DataError(f"got {jtype(value)}; expected a string", path, where, name))
            return None
    extra = extra_json({k: v for k, v in item.items() if k not in (id_key, text_key, "title", "image")})
    return str(doc_id), text, title, image, extra


class ArrowWriter:
    """Append tables to an Arrow IPC file, written as record batches of about 64 MB.

    Few large batches keep a memory-mapped column to a handful of chunks, so positional takes stay cheap;
    memory is bounded by the batch size, not the file size.
    """

    def __init__(self, path: Path, schema: pa.Schema):
        self.schema = schema
        self.rows = 0
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)
        self._pending: list[pa.Table] = []
        self._size = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table.cast(self.schema))
        self._size += table.nbytes
        self.rows += table.num_rows
        if self._size >= _BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            merged = pa.concat_tables(self._pending).combine_chunks()
            for batch in merged.to_batches(max_chunksize=merged.num_rows):
                self._writer.write_batch(batch)
        self._pending, self._size = [], 0

    def close(self) -> int:
        self._flush()
        self._writer.close()
        self._sink.close()
        return self.rows


def write_table(path: Path, batches: Iterable[pa.Table], schema: pa.Schema) -> int:
    """Write tables to an Arrow IPC file (see :class:`ArrowWriter`); returns the number of rows."""
    writer = ArrowWriter(path, schema)
    try:
        for table in batches:
            writer.write(table)
    finally:
        rows = writer.close()
    return rows


def open_table(path: Path) -> pa.Table:
    """Memory-map an Arrow IPC file written by :func:`write_table` (zero-copy)."""
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def load_corpus(
    path: str | Path, *, cache_dir: str | Path | None = None, corpus_id: str | None = None
) -> Corpus:
    """Load a corpus, converting it to a memory-mapped Arrow cache the first time.

    Args:
        path: a NeMo corpus directory (``merlin_metadata.json`` plus ``*.parquet``/``*.jsonl`` files with
            ``id`` and ``text`` columns, optional ``title``/``image``), a BEIR dataset directory (its
            ``corpus.jsonl``: ``_id``, ``title``, ``text``), or one ``.jsonl``/``.parquet`` file.
        cache_dir: where conversions are cached (default :func:`default_cache_dir`).
        corpus_id: id for sources without metadata (default: BEIR directory name or file stem).

    Returns:
        The :class:`Corpus`. A row's fields other than id, text, title and image (BEIR ``metadata``,
        extra Parquet columns) are kept in each :class:`Doc`'s ``extra`` (see :func:`extra_json`).

    Raises:
        DataError: missing/bad ``merlin_metadata.json``, missing columns, bad rows (every bad row is listed
            in :class:`CorpusError`), or duplicate document ids.
    """
    path = Path(path)
    files = _corpus_files(path, corpus_id)
    key = cache_key("corpus", str(path.resolve()), files.corpus_id, fingerprint(files.key_files))
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / "corpora" / key
    if not (final / "meta.json").is_file():
        root.joinpath("corpora").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=root / "corpora"))
        try:
            _convert_corpus(files, tmp)
            publish_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads((final / "meta.json").read_text())
    return Corpus.open(
        final / "docs.arrow", meta["corpus_id"], meta["metadata"], path, index_dir=final, key=key
    )


def _convert_corpus(files: _CorpusFiles, out: Path) -> None:
    errors: list[DataError] = []

    def batches() -> Iterator[pa.Table]:
        for f in files.data_files:
            yield from (_parquet_batches(f, errors) if f.suffix == ".parquet" else _jsonl_batches(f, errors))

    n = write_table(out / "docs.arrow", batches(), DOC_SCHEMA)
    table = open_table(out / "docs.arrow")
    index, duplicates = IdIndex.build(_Column(table.column("id")))
    source = files.data_files[0] if len(files.data_files) == 1 else files.path
    for first, dup in duplicates[:100]:
        doc_id = table.column("id")[dup].as_py()
        errors.append(
            DataError(
                f"duplicate document id {doc_id!r} (rows {first} and {dup}); expected each id once per corpus",
                source,
                field="id",
            )
        )
    if errors:
        raise CorpusError(errors)
    if n == 0:
        raise DataError("corpus has no documents; expected rows with id and text", files.path)
    index.save(out)
    meta = {"corpus_id": files.corpus_id, "metadata": files.metadata, "n": n, "source": str(files.path)}
    (out / "meta.json").write_text(json.dumps(meta))


def inline_corpus(arrow_path: Path) -> Corpus:
    """The documents of inline training data (``id, text, title, image, extra``), memory-mapped, as a Corpus."""
    return Corpus.open(arrow_path, INLINE_CORPUS_ID)
