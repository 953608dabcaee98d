"""Read training data in any supported format into canonical :class:`Example` records.

Formats are detected from content, not the file suffix (see :func:`detect_format` and docs/formats.md):
NeMo Automodel inline JSONL/JSON and corpus-id JSON, NeMo SBERT JSON, NeMo GPT-embedding JSONL,
FlagEmbedding JSONL, LLM-Embedder JSON(L), Tevatron JSONL and BEIR directories.

Every bad record becomes a :class:`DataError` whose ``str()`` is ``path:line: field: what is wrong, what was
expected``. :func:`iter_examples` raises the first one, or with ``skip_invalid=True`` skips and counts them
in a :class:`ReadStats`. Problems with a whole file (empty, binary, not UTF-8, broken JSON document, bad
corpus metadata) are raised even with ``skip_invalid``: there is no record to skip.

Large JSON documents (a corpus-id file with millions of records) are read incrementally, one record at a
time, so memory stays flat.
"""

from __future__ import annotations

import codecs
import glob
import json
import math
import operator
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from densetune.data import beir
from densetune.data.corpus import (
    MERLIN_METADATA,
    Corpus,
    doc_text,
    find_lone_surrogate,
    iter_text_lines,
    jtype,
    load_corpus,
    may_hold_surrogate,
    parse_json_line,
    read_merlin_metadata,
)
from densetune.data.records import EXAMPLE_TYPES, Doc, Example, text_doc_id
from densetune.errors import DataError

__all__ = [
    "FORMATS",
    "ReadStats",
    "detect_format",
    "doc_text",
    "expand_paths",
    "iter_examples",
    "write_examples",
]

FORMATS = (
    "beir",
    "nemo-corpus-id",
    "nemo-inline",
    "sbert",
    "gpt-embedding",
    "flag",
    "llm-embedder",
    "tevatron",
)
DATA_SUFFIXES = (".jsonl", ".json")
_SNIFF_BYTES = 1 << 16
_MAX_FIRST_LINE = 16 << 20
_DETECT_RECORDS = 50
CHUNK = 4096  # records per chunk when corpus ids are looked up in bulk

_BINARY_MAGIC = {
    b"PAR1": "a Parquet file",
    b"\x1f\x8b": "gzip-compressed (decompress it first)",
    b"PK\x03\x04": "a zip archive (extract it first)",
    b"ARROW1": "an Arrow file",
    b"\x89HDF": "an HDF5 file",
}


@dataclass
class ReadStats:
    """Counts from reading: filled by :func:`iter_examples` when passed as ``stats``.

    Attributes:
        read: examples yielded.
        skipped: invalid records skipped (``skip_invalid=True``).
        errors: the DataError of every skipped record, in file order.
        notes: counts of what was read but not kept, by reason: records left out that are not errors (BEIR
            queries without a positive), and record fields the file's format does not read.
        formats: detected format of each file read.
        corpora: size of each corpus the data refers to, by corpus id.
    """

    read: int = 0
    skipped: int = 0
    errors: list[DataError] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)
    formats: dict[str, str] = field(default_factory=dict)
    corpora: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# Low-level reading: sniffing, JSON lines, and an incremental JSON document reader


def _sniff(path: Path) -> str:
    """Check a data file is non-empty UTF-8 text and return its layout: ``jsonl``, ``json-array``, ``json-object``.

    Raises:
        DataError: empty, binary, UTF-16/32 or otherwise not UTF-8, or not starting with ``{`` / ``[``.
    """
    if not path.exists():
        raise DataError("file not found", path)
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head.strip():
        raise DataError("empty file; expected JSON lines or a JSON document with training records", path)
    for bom, name in (
        (codecs.BOM_UTF32_LE, "UTF-32"),
        (codecs.BOM_UTF32_BE, "UTF-32"),
        (codecs.BOM_UTF16_LE, "UTF-16"),
        (codecs.BOM_UTF16_BE, "UTF-16"),
    ):
        if head.startswith(bom):
            raise DataError(f"file is {name}-encoded; expected UTF-8 text (re-save it as UTF-8)", path, 1)
    for magic, what in _BINARY_MAGIC.items():
        if head.startswith(magic):
            raise DataError(f"binary file ({what}); expected UTF-8 JSON lines or a JSON document", path, 1)
    if b"\x00" in head:
        line = head[: head.index(b"\x00")].count(b"\n") + 1
        raise DataError(
            "binary file (contains NUL bytes); expected UTF-8 JSON lines or a JSON document", path, line
        )
    # Bytes that are not UTF-8 later in the file are reported where they are (per line in JSON lines);
    # here only the start of the file must be readable to tell its layout.
    text = head.decode("utf-8", errors="replace")
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped:
        raise DataError("empty file (only whitespace); expected training records", path)
    line = text[: len(text) - len(stripped)].count("\n") + 1
    if stripped[0] == "\ufffd":
        start = len(head) - len(head.lstrip(codecs.BOM_UTF8 + b" \t\r\n"))
        raise DataError(
            f"not valid UTF-8 (byte 0x{head[start]:02x}); expected UTF-8 text (re-save the file as UTF-8)",
            path,
            line,
        )
    if stripped[0] == "[":
        return "json-array"
    if stripped[0] != "{":
        raise DataError(
            f"invalid JSON: file starts with {stripped[0]!r}; expected JSON lines ('{{') or a JSON document ('{{' or '[')",
            path,
            line,
        )
    with open(path, "rb") as f:
        for _ in range(line - 1):
            f.readline()
        first = f.readline(_MAX_FIRST_LINE)
        rest = f.read(4096)
    if len(first) >= _MAX_FIRST_LINE:
        return "json-object"
    try:
        obj = json.loads(first.decode("utf-8", errors="replace").lstrip("\ufeff"))
    except json.JSONDecodeError:
        return "jsonl" if path.suffix == ".jsonl" else "json-object"
    if isinstance(obj, dict) and ("corpus" in obj or "data" in obj) and not rest.strip():
        return "json-object"
    return "jsonl"


class _JsonStream:
    """Reads one JSON document from a binary file value by value (``raw_decode`` on a sliding buffer).

    Tracks the line number of the read position so each record's error can name its line.
    """

    CHUNK = 1 << 20
    MAX_VALUE = 1 << 28  # a single record larger than this is reported as broken JSON
    _WS = re.compile(r"[ \t\r\n]*")

    def __init__(self, f: BinaryIO, path: Path):
        self.f = f
        self.path = path
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.json = json.JSONDecoder()
        self.buf = ""
        self.pos = 0
        self.line = 1
        self.eof = False
        self.first = True

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.f.read(max(self.CHUNK, len(self.buf) - self.pos))
        try:
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as err:
            line = self.line + self.buf.count("\n", self.pos) + data[: err.start].count(b"\n")
            byte = data[err.start] if err.start < len(data) else 0
            raise DataError(
                f"not valid UTF-8 (byte 0x{byte:02x}); expected UTF-8 text (re-save the file as UTF-8)",
                self.path,
                line,
            ) from None
        if not data:
            self.eof = True
        if self.first:
            text = text.lstrip("\ufeff")
            self.first = False
        if self.pos > self.CHUNK:  # drop what has been consumed
            self.buf = self.buf[self.pos :]
            self.pos = 0
        self.buf += text
        return bool(data)

    def _advance(self, new_pos: int) -> None:
        self.line += self.buf.count("\n", self.pos, new_pos)
        self.pos = new_pos

    def peek(self) -> str:
        """Skip whitespace and return the next character ("" at end of file)."""
        while True:
            end = self._WS.match(self.buf, self.pos).end()
            self._advance(end)
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def error(self, message: str, pos: int | None = None) -> DataError:
        line = self.line if pos is None else self.line + self.buf.count("\n", self.pos, pos)
        return DataError(f"invalid JSON: {message}", self.path, line)

    def expect(self, chars: str, what: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise self.error(f"expected {what}, got {repr(c) if c else 'end of file'}")
        self._advance(self.pos + 1)
        return c

    def value(self) -> tuple[Any, int]:
        """Decode the next JSON value; returns it with the line it starts on."""
        if not self.peek():
            raise self.error("unexpected end of file; expected a value")
        start_line = self.line
        while True:
            try:
                obj, end = self.json.raw_decode(self.buf, self.pos)
            except RecursionError:
                raise self.error("nested too deeply") from None
            except json.JSONDecodeError as err:
                truncated = err.pos >= len(self.buf) - 8 or err.msg.startswith("Unterminated string")
                if truncated and len(self.buf) - self.pos < self.MAX_VALUE and self._fill():
                    continue
                col = err.pos - self.buf.rfind("\n", 0, err.pos)
                raise self.error(f"{err.msg} (column {col})", err.pos) from None
            if end >= len(self.buf) and isinstance(obj, (int, float)) and not self.eof and self._fill():
                continue  # a number at the end of the buffer may go on in the next chunk
            if may_hold_surrogate(self.buf[self.pos : end]):
                where = find_lone_surrogate(obj)
                if where is not None:
                    raise DataError(
                        "lone surrogate escape (\\uD800-\\uDFFF): not valid Unicode; expected valid text",
                        self.path,
                        start_line,
                        where or None,
                    )
            self._advance(end)
            return obj, start_line

    _SEP = re.compile(r"[ \t\r\n]*([,\]])")

    def iter_array(self) -> Iterator[tuple[Any, int]]:
        """After ``[`` was consumed: yield each element with its starting line, consuming the ``]``."""
        if self.peek() == "]":
            self._advance(self.pos + 1)
            return
        while True:
            yield self.value()
            sep = self._SEP.match(self.buf, self.pos)  # fast path: separator already in the buffer
            if sep is not None:
                self._advance(sep.end())
                if sep.group(1) == "]":
                    return
            elif self.expect(",]", "',' or ']' after a list element") == "]":
                return

    def iter_keys(self) -> Iterator[tuple[str, int]]:
        """After ``{`` was consumed: yield each key (the caller must consume its value), consuming ``}``."""
        if self.peek() == "}":
            self._advance(self.pos + 1)
            return
        while True:
            if self.peek() != '"':
                raise self.error("expected a property name in double quotes")
            key, line = self.value()
            self.expect(":", "':' after a property name")
            yield key, line
            if self.expect(",}", "',' or '}' after a value") == "}":
                return

    def end(self) -> None:
        c = self.peek()
        if c:
            raise self.error(f"extra data after the JSON document (starting with {c!r})")


@dataclass
class _Raw:
    """One raw record: the parsed object (or the DataError parsing it), its line, index and field prefix."""

    obj: Any
    line: int
    index: int
    prefix: str = ""


def _iter_raw(path: Path, layout: str) -> Iterator[_Raw]:
    """Raw records of a non-corpus-id file: JSON lines, elements of a JSON list, or one JSON object."""
    if layout == "jsonl":
        for index, (lineno, text) in enumerate(iter_text_lines(path)):
            if isinstance(text, DataError):
                yield _Raw(text, lineno, index)
                continue
            try:
                obj = parse_json_line(text, path, lineno, "one JSON object per line")
            except DataError as err:
                obj = err
            yield _Raw(obj, lineno, index)
        return
    with open(path, "rb") as f:
        stream = _JsonStream(f, path)
        if layout == "json-array":
            stream.expect("[", "'['")
            for index, (obj, line) in enumerate(stream.iter_array()):
                yield _Raw(obj, line, index, f"[{index}]")
        else:
            obj, line = stream.value()
            yield _Raw(obj, line, 0)
        stream.end()


# ---------------------------------------------------------------------------------------------------------
# Format detection

_FLAG_KEYS = {"pos_scores", "neg_scores", "prompt", "type", "category"}
_LLM_KEYS = {"teacher_scores", "history", "answers", "task"}


def _record_format(keys: set[str], layout: str, suffix: str, records: list[dict]) -> str | None:
    if "positive_passages" in keys:
        return "tevatron"
    if "pos" in keys or "history" in keys:
        if keys & _LLM_KEYS - {"task"} or ("task" in keys and not keys & _FLAG_KEYS):
            return "llm-embedder"
        if keys & _FLAG_KEYS:
            return "flag"
        return "llm-embedder" if suffix == ".json" else "flag"
    if "pos_doc" in keys or "question" in keys:
        if layout == "jsonl" and {"query_id", "doc_id"} <= keys:
            return "gpt-embedding"
        sbert = layout == "json-array" and all(
            "query" in r and isinstance(r.get("pos_doc"), str) and isinstance(r.get("neg_doc"), list)
            for r in records
        )
        return "sbert" if sbert else "nemo-inline"
    return None


def detect_format(path: str | Path) -> str:
    """The format of a training file or directory, from its content.

    Returns:
        One of :data:`FORMATS`: ``beir`` (a directory with corpus.jsonl + queries.jsonl), ``nemo-corpus-id``
        (``{"corpus": [...], "data": [...]}``), ``tevatron`` (``positive_passages``), ``gpt-embedding``
        (JSONL with ``pos_doc`` + ``query_id`` + ``doc_id``), ``sbert`` (a JSON list of
        ``{query, pos_doc: str, neg_doc: [...]}``), ``nemo-inline`` (other ``pos_doc``/``question``
        records), ``llm-embedder`` (``pos`` with ``teacher_scores``/``history``/``answers``/``task``, or
        plain ``pos`` records in a ``.json`` file), ``flag`` (``pos`` with ``pos_scores``/``neg_scores``/
        ``prompt``/``type``, or plain ``pos`` records in ``.jsonl``).

    Raises:
        DataError: the file is unreadable (empty, binary, not UTF-8, broken JSON) or its records match no
            format.
    """
    path = Path(path)
    if path.is_dir():
        if beir.is_beir_dir(path):
            return "beir"
        if (path / MERLIN_METADATA).is_file():
            raise DataError(
                "this is a corpus directory (merlin_metadata.json), not training data; pass the corpus-id JSON that lists it",
                path,
            )
        raise DataError(
            "directory is not a BEIR dataset; expected corpus.jsonl, queries.jsonl and qrels/*.tsv", path
        )
    return _detect(path)[0]


def _detect(path: Path) -> tuple[str, str]:
    layout = _sniff(path)
    if layout == "json-object":
        with open(path, "rb") as f:
            stream = _JsonStream(f, path)
            stream.expect("{", "'{'")
            for key, _ in stream.iter_keys():
                if key in ("corpus", "data"):
                    return "nemo-corpus-id", layout
                break
    records: list[dict] = []
    first_error: DataError | None = None
    first_line = 1
    try:
        for raw in _iter_raw(path, layout):
            if isinstance(raw.obj, dict):
                records.append(raw.obj)
            elif first_error is None:
                first_error = raw.obj if isinstance(raw.obj, DataError) else None
                first_line = raw.line
            if len(records) >= _DETECT_RECORDS:
                break
    except DataError:
        if not records:
            raise  # otherwise reading reports it after the records before it

    if not records:
        if first_error is not None:
            raise first_error
        raise DataError(
            'no JSON object records; expected objects such as {"query": ..., "pos": [...]}', path, first_line
        )
    keys = set().union(*records)
    fmt = _record_format(keys, layout, path.suffix, records)
    if fmt is None:
        raise DataError(
            f"cannot tell the format from the keys {sorted(keys)[:12]}; expected query + pos_doc (NeMo), query + pos "
            "(FlagEmbedding / LLM-Embedder), positive_passages (Tevatron) or corpus + data (NeMo corpus-id)",
            path,
            first_line,
        )
    return fmt, layout


# ---------------------------------------------------------------------------------------------------------
# Record -> Example, one function per format


class _Rec:
    """A record being converted: its fields plus where it is, for error messages."""

    def __init__(self, path: Path, raw: _Raw):
        self.path = path
        self.obj: dict = raw.obj
        self.line = raw.line
        self.index = raw.index
        self.prefix = raw.prefix

    def err(self, fld: str, message: str) -> DataError:
        name = f"{self.prefix}.{fld}" if self.prefix and fld else (self.prefix or fld)
        return DataError(message, self.path, self.line, name or None)

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}"

    def default_query_id(self) -> str:
        return f"{self.path.name}:{self.index}"

    def string(
        self, key: str, *, aliases: tuple[str, ...] = (), required: bool = True, what: str = "a string"
    ) -> str:
        for k in (key, *aliases):
            if k in self.obj:
                key = k
                break
        else:
            if required:
                names = " or ".join(repr(k) for k in (key, *aliases))
                raise self.err(key, f"missing; expected {what} in {names}")
            return ""
        value = self.obj[key]
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            raise self.err(key, f"got {jtype(value)}; expected {what}")
        if required and not value.strip():
            raise self.err(key, f"empty string; expected {what}")
        return value

    def optional_id(self, key: str) -> str | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.err(key, f"got {jtype(value)}; expected a string or integer id")
        return str(value)

    def text_docs(self, key: str, *, required: bool, dicts: bool, single: bool = True) -> list[Doc]:
        """Documents given inline: a string, a list of strings, or (``dicts``) objects with ``text``."""
        if key not in self.obj or self.obj[key] is None:
            if required:
                raise self.err(key, "missing; expected at least one positive document")
            return []
        value = self.obj[key]
        shapes = "a string, a list of strings" + (' or a list of {"text": ...} objects' if dicts else "")
        if isinstance(value, (str, dict)) and single:
            value = [value]
        if not isinstance(value, list):
            raise self.err(key, f"got {jtype(value)}; expected {shapes}")
        if required and not value:
            raise self.err(key, "empty list; expected at least one positive document")
        docs = []
        for j, item in enumerate(value):
            if isinstance(item, str):
                docs.append(Doc(id=text_doc_id(item), text=item))
            elif isinstance(item, dict) and dicts:
                docs.append(self._dict_doc(item, f"{key}[{j}]"))
            else:
                raise self.err(
                    f"{key}[{j}]",
                    f"got {jtype(item)}; expected {'a string or an object with text' if dicts else 'a string'}",
                )
        return docs

    def _dict_doc(self, item: dict, fld: str, *, text_key: str = "text", id_key: str = "id") -> Doc:
        text = item.get(text_key)
        if not isinstance(text, str):
            what = "missing" if text_key not in item else f"got {jtype(text)}"
            raise self.err(f"{fld}.{text_key}", f"{what}; expected the document text as a string")
        extra = {k: v for k, v in item.items() if k not in (text_key, id_key, "title", "image")}
        doc_id = item.get(id_key)
        if doc_id is not None and (isinstance(doc_id, bool) or not isinstance(doc_id, (str, int))):
            raise self.err(f"{fld}.{id_key}", f"got {jtype(doc_id)}; expected a string or integer id")
        for name in ("title", "image"):
            if item.get(name) is not None and not isinstance(item[name], str):
                raise self.err(f"{fld}.{name}", f"got {jtype(item[name])}; expected a string")
        return Doc(
            id=str(doc_id) if doc_id not in (None, "") else text_doc_id(text),
            text=text,
            title=item.get("title") or "",
            image=item.get("image") or "",
            extra=extra,
        )

    def scores(self, key: str, expected: int, what: str) -> list[float] | None:
        if key not in self.obj or self.obj[key] is None:
            return None
        value = self.obj[key]
        if not isinstance(value, list):
            raise self.err(key, f"got {jtype(value)}; expected a list of numbers")
        out = []
        for j, s in enumerate(value):
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                raise self.err(f"{key}[{j}]", f"got {jtype(s)}; expected a number")
            if not math.isfinite(s):
                shown = "NaN" if math.isnan(s) else ("Infinity" if s > 0 else "-Infinity")
                raise self.err(f"{key}[{j}]", f"{shown} is not a finite number; expected finite scores")
            out.append(float(s))
        if len(out) != expected:
            raise self.err(
                key, f"{len(out)} scores for {what}; expected {expected} (one per document, in order)"
            )
        return out

    def strings(self, key: str) -> list[str]:
        value = self.obj.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.err(key, f"got {jtype(value)}; expected a list of strings")
        return value


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _nemo_inline(rec: _Rec, task: str) -> Example:
    query = rec.string("query", aliases=("question",), what="the query text as a non-empty string")
    qid = rec.optional_id("question_id") or rec.optional_id("query_id") or rec.default_query_id()
    return Example(
        query_id=qid,
        query=query,
        positives=rec.text_docs("pos_doc", required=True, dicts=True),
        negatives=rec.text_docs("neg_doc", required=False, dicts=True),
        task=task,
        source=rec.source,
    )


def _gpt_embedding(rec: _Rec, task: str) -> Example:
    query = rec.string("query", what="the query text as a non-empty string")
    positives = rec.text_docs("pos_doc", required=True, dicts=False)
    doc_id = rec.optional_id("doc_id")
    if doc_id:
        positives[0].id = doc_id  # doc_id names the positive passage
    return Example(
        query_id=rec.optional_id("query_id") or rec.default_query_id(),
        query=query,
        positives=positives,
        negatives=rec.text_docs("neg_doc", required=False, dicts=False),
        task=task,
        source=rec.source,
    )


def _flag(rec: _Rec, task: str) -> Example:
    query = rec.string("query", what="the query text as a non-empty string")
    positives = rec.text_docs("pos", required=True, dicts=False)
    negatives = rec.text_docs("neg", required=False, dicts=False)
    kind = rec.string("type", required=False) or "retrieval"
    if kind not in EXAMPLE_TYPES:
        raise rec.err("type", f"unknown type {kind!r}; expected one of {', '.join(EXAMPLE_TYPES)}")
    return Example(
        query_id=rec.optional_id("query_id") or rec.default_query_id(),
        query=query,
        positives=positives,
        negatives=negatives,
        pos_scores=rec.scores("pos_scores", len(positives), _count(len(positives), "positive")),
        neg_scores=rec.scores("neg_scores", len(negatives), _count(len(negatives), "negative")),
        task=task,
        type=kind,
        prompt=rec.string("prompt", required=False),
        category=rec.string("category", required=False),
        source=rec.source,
    )


def _llm_embedder(rec: _Rec, task: str) -> Example:
    query = rec.string("query", what="the query text as a non-empty string")
    task = rec.string("task", required=False) or task
    history = rec.text_docs("history", required=False, dicts=False)
    if "history" in rec.obj and rec.obj["history"] is not None:
        # As the seed does: a history row has no positive; its history rows are the candidates, and the
        # teacher scores (aligned with them) decide the positive at selection time.
        positives: list[Doc] = []
        negatives = list(history)
        if rec.obj.get("teacher_scores") is None:
            raise rec.err(
                "teacher_scores", "missing; a record with history needs teacher_scores (one per history row)"
            )
    else:
        positives = rec.text_docs("pos", required=True, dicts=False)
        negatives = rec.text_docs("neg", required=False, dicts=False)
    n_pos, n_neg = len(positives), len(negatives)
    scores = rec.scores(
        "teacher_scores",
        n_pos + n_neg,
        f"{_count(n_pos, 'positive')} + {_count(n_neg, 'history row' if history else 'negative')}",
    )
    return Example(
        query_id=rec.optional_id("query_id") or rec.default_query_id(),
        query=query,
        positives=positives,
        negatives=negatives,
        pos_scores=scores[:n_pos] if scores is not None else None,
        neg_scores=scores[n_pos:] if scores is not None else None,
        task=task,
        history=history,
        answers=rec.strings("answers"),
        source=rec.source,
    )


def _tevatron(rec: _Rec, task: str) -> Example:
    query = rec.string("query", what="the query text as a non-empty string")

    def passages(key: str, required: bool) -> list[Doc]:
        value = rec.obj.get(key)
        if value is None:
            if required:
                raise rec.err(key, "missing; expected a list of {docid, title, text} passages")
            return []
        if not isinstance(value, list):
            raise rec.err(key, f"got {jtype(value)}; expected a list of {{docid, title, text}} passages")
        if required and not value:
            raise rec.err(key, "empty list; expected at least one positive passage")
        out = []
        for j, item in enumerate(value):
            if not isinstance(item, dict):
                raise rec.err(f"{key}[{j}]", f"got {jtype(item)}; expected a {{docid, title, text}} object")
            out.append(rec._dict_doc(item, f"{key}[{j}]", id_key="docid"))
        return out

    return Example(
        query_id=rec.optional_id("query_id") or rec.default_query_id(),
        query=query,
        positives=passages("positive_passages", True),
        negatives=passages("negative_passages", False),
        task=task,
        source=rec.source,
    )


# The record fields each format reads; any other field is counted in ReadStats.notes (never silently lost).
_READ_FIELDS = {
    "nemo-inline": frozenset({"query", "question", "question_id", "query_id", "pos_doc", "neg_doc"}),
    "gpt-embedding": frozenset({"query", "query_id", "doc_id", "pos_doc", "neg_doc"}),
    "flag": frozenset(
        {"query", "query_id", "pos", "neg", "pos_scores", "neg_scores", "prompt", "type", "category"}
    ),
    "llm-embedder": frozenset(
        {"query", "query_id", "task", "pos", "neg", "history", "teacher_scores", "answers"}
    ),
    "tevatron": frozenset({"query", "query_id", "positive_passages", "negative_passages"}),
    "nemo-corpus-id": frozenset({"question_id", "question", "query", "corpus_id", "pos_doc", "neg_doc"}),
}
_READ_FIELDS["sbert"] = _READ_FIELDS["nemo-inline"]


def _note_unread(obj: dict, fmt: str, notes: Counter) -> None:
    """Count the record's fields that ``fmt`` does not read, one note per field name."""
    fields = _READ_FIELDS[fmt]
    if obj.keys() <= fields:  # the common case, without building a set per record
        return
    for key in obj.keys() - fields:
        notes[f"records with field {key!r}, which the {fmt} format does not read (not kept)"] += 1


_CONVERTERS = {
    "nemo-inline": _nemo_inline,
    "sbert": _nemo_inline,
    "gpt-embedding": _gpt_embedding,
    "flag": _flag,
    "llm-embedder": _llm_embedder,
    "tevatron": _tevatron,
}


def _inline_items(path: Path, fmt: str, layout: str, notes: Counter) -> Iterator[Example | DataError]:
    task = path.parent.name if fmt == "llm-embedder" else path.stem
    convert = _CONVERTERS[fmt]
    for raw in _iter_raw(path, layout):
        if isinstance(raw.obj, DataError):
            yield raw.obj
            continue
        rec = _Rec(path, raw)
        if not isinstance(raw.obj, dict):
            yield rec.err("", f"got {jtype(raw.obj)}; expected a JSON object (one training record)")
            continue
        try:
            example = convert(rec, task)
        except DataError as err:
            yield err
            continue
        _note_unread(raw.obj, fmt, notes)
        yield example


# ---------------------------------------------------------------------------------------------------------
# NeMo corpus-id JSON: {"corpus": [{"path": ...}], "data": [...]}; documents are ids looked up in bulk


@dataclass
class _Pending:
    """A corpus-id record converted to an Example whose documents still need their rows looked up.

    The Example's document lists stay empty: documents given by id travel as corpus rows, and Doc objects
    are made only when someone asks for them (see :func:`iter_examples`), which keeps conversion fast.
    """

    example: Example
    rec: _Rec
    pos_ids: list[str]
    neg_ids: list[str]


def _corpus_header(
    path: Path, entries: list[tuple[Any, int]], key_line: int, cache_dir: Path | None
) -> dict[str, Corpus]:
    """Load the corpora a corpus-id JSON lists (``entries``: each entry with the line it starts on)."""
    if not entries:
        raise DataError(
            'empty list; expected at least one {"path": ...} corpus entry', path, key_line, "corpus"
        )
    corpora: dict[str, Corpus] = {}
    where: dict[str, str] = {}
    for i, (entry, line) in enumerate(entries):
        fld = f"corpus[{i}].path"
        p = entry.get("path") if isinstance(entry, dict) else entry
        if not isinstance(p, str) or not p:
            raise DataError(
                f"got {jtype(p)}; expected the corpus directory path as a string", path, line, fld
            )
        corpus_dir = (path.parent / p) if not Path(p).is_absolute() else Path(p)
        if not corpus_dir.is_dir():
            raise DataError(
                f"corpus directory {str(corpus_dir)!r} not found; paths are relative to the JSON file",
                path,
                line,
                fld,
            )
        if not (corpus_dir / MERLIN_METADATA).is_file():
            raise DataError(
                f"corpus directory {str(corpus_dir)!r} has no {MERLIN_METADATA}; expected "
                '{"class": "TextQADataset", "corpus_id": ...} in it',
                path,
                line,
                fld,
            )
        cid = read_merlin_metadata(corpus_dir)["corpus_id"]
        if cid in corpora:
            raise DataError(
                f"corpus_id {cid!r} is used by two corpora ({where[cid]!r} and {str(corpus_dir)!r}); expected each "
                "corpus_id at one path",
                path,
                line,
                fld,
            )
        corpora[cid] = load_corpus(corpus_dir, cache_dir=cache_dir)
        where[cid] = str(corpus_dir)
    return corpora


def _corpus_id_stream(path: Path, cache_dir: Path | None) -> tuple[dict[str, Corpus], Iterator[_Raw]]:
    """Read the header (corpora) of a corpus-id JSON, then stream its data records (two passes if data comes first)."""
    f = open(path, "rb")  # noqa: SIM115 - closed by the records() generator below
    try:
        stream = _JsonStream(f, path)
        stream.expect("{", "'{' (a corpus-id JSON object)")
        keys = stream.iter_keys()
        corpora: dict[str, Corpus] | None = None
        data_first = False
        for key, line in keys:
            if key == "corpus":
                if stream.peek() != "[":
                    value, line = stream.value()
                    raise DataError(
                        f'got {jtype(value)}; expected a list of {{"path": ...}} corpus entries',
                        path,
                        line,
                        "corpus",
                    )
                stream.expect("[", "'['")
                corpora = _corpus_header(path, list(stream.iter_array()), line, cache_dir)
            elif key == "data":
                if corpora is not None:
                    break
                data_first = True
                if stream.peek() == "[":
                    stream.expect("[", "'['")
                    for _ in stream.iter_array():
                        pass
                else:
                    stream.value()
            else:
                stream.value()
        else:
            f.close()
            if corpora is None:
                raise DataError(
                    'missing "corpus"; expected a list of {"path": ...} corpus directories', path, 1, "corpus"
                )
            if not data_first:
                raise DataError('missing "data"; expected a list of training records', path, 1, "data")
            f = open(path, "rb")  # noqa: SIM115
            stream = _JsonStream(f, path)
            stream.expect("{", "'{'")
            keys = stream.iter_keys()
            for key, _ in keys:
                if key == "data":
                    break
                stream.value()
    except BaseException:
        f.close()  # the header failed: the generator that would close it never runs
        raise
    assert corpora is not None

    def records() -> Iterator[_Raw]:
        try:
            if stream.peek() != "[":
                obj, line = stream.value()
                raise DataError(f"got {jtype(obj)}; expected a list of training records", path, line, "data")
            stream.expect("[", "'['")
            for index, (obj, line) in enumerate(stream.iter_array()):
                yield _Raw(obj, line, index, f"data[{index}]")
            for _ in keys:  # consume the rest of the object so trailing garbage is reported
                stream.value()
            stream.end()
        finally:
            f.close()

    return corpora, records()


_GET_ID = operator.itemgetter("id")
_STR_ONLY = {str}


def _doc_ids(rec: _Rec, key: str, required: bool) -> list[str]:
    """Document ids of a corpus-id record's ``pos_doc`` / ``neg_doc``: raw ids or ``{"id": ...}`` objects."""
    value = rec.obj.get(key)
    if type(value) is list and value:  # fast path: all raw string ids, or all {"id": "..."} objects
        try:
            flat = list(map(_GET_ID, value)) if type(value[0]) is dict else value
        except (KeyError, TypeError):
            flat = []
        if flat and set(map(type, flat)) == _STR_ONLY and "" not in flat:
            return flat
    return _doc_ids_checked(rec, key, required)


def _doc_ids_checked(rec: _Rec, key: str, required: bool) -> list[str]:
    if key not in rec.obj:
        possibly = ", possibly empty" if not required else ""
        raise rec.err(key, f'missing; expected a list of document ids (or {{"id": ...}} objects){possibly}')
    value = rec.obj[key]
    if value is None and not required:
        return []
    if isinstance(value, (str, int, dict)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise rec.err(key, f"got {jtype(value)}; expected a list of document ids")
    if required and not value:
        raise rec.err(key, "empty list; expected at least one positive document id")
    out = []
    for j, item in enumerate(value):
        v = item.get("id") if isinstance(item, dict) else item
        if isinstance(v, bool) or not isinstance(v, (str, int)) or v == "":
            what = "an object without id" if isinstance(item, dict) and "id" not in item else jtype(v)
            raise rec.err(
                f"{key}[{j}]", f'got {what}; expected a document id (string or integer) or {{"id": ...}}'
            )
        out.append(str(v))
    return out


def _corpus_id_record(rec: _Rec, corpora: dict[str, Corpus]) -> _Pending:
    obj = rec.obj
    # Fast paths for well-formed records (millions of them); the general checks give the error messages.
    qid = obj.get("question_id")
    if type(qid) is not str or not qid:
        qid = rec.optional_id("question_id")
        if qid is None:
            raise rec.err("question_id", "missing; expected the question id as a string")
    query = obj.get("question")
    if type(query) is not str or not query.strip():
        query = rec.string("question", aliases=("query",), what="the question text as a non-empty string")
    cid = obj.get("corpus_id")
    if type(cid) is not str:
        cid = rec.optional_id("corpus_id")
    if cid is None:
        raise rec.err("corpus_id", f"missing; expected one of the corpora: {', '.join(corpora)}")
    if cid not in corpora:
        raise rec.err(
            "corpus_id",
            f'unknown corpus_id {cid!r}; expected one of the corpora listed in "corpus": {", ".join(corpora)}',
        )

    pos_ids, neg_ids = _doc_ids(rec, "pos_doc", True), _doc_ids(rec, "neg_doc", False)
    meta = corpora[cid].metadata
    example = Example(
        query_id=qid,
        query=query,
        task=cid,
        query_instruction=meta.get("query_instruction") or "",
        passage_instruction=meta.get("passage_instruction") or "",
        corpus_id=cid,
        source=rec.source,
    )
    return _Pending(example, rec, pos_ids, neg_ids)


Rows = tuple[np.ndarray, np.ndarray, np.ndarray]  # rows of positives, negatives, history in the doc table


_NO_ROWS = np.zeros(0, dtype=np.int64)


def _lookup_pending(
    batch: list[_Pending | DataError], corpora: dict[str, Corpus]
) -> Iterator[tuple[Example, Rows] | DataError]:
    """Look the batch's document ids up in bulk (one vectorised call per corpus); unknown ids -> DataError."""
    ids: dict[str, list[str]] = {}
    starts: dict[int, int] = {}  # batch position -> offset of its ids in its corpus' list
    for k, item in enumerate(batch):
        if isinstance(item, _Pending):
            flat = ids.setdefault(item.example.corpus_id, [])
            starts[k] = len(flat)
            flat.extend(item.pos_ids)
            flat.extend(item.neg_ids)
    rows = {cid: corpora[cid].rows(flat) for cid, flat in ids.items()}
    unknown = {cid: set(np.flatnonzero(r < 0).tolist()) for cid, r in rows.items()}
    for k, item in enumerate(batch):
        if not isinstance(item, _Pending):
            yield item
            continue
        cid = item.example.corpus_id
        start = starts[k]
        n_pos, n_neg = len(item.pos_ids), len(item.neg_ids)
        r = rows[cid][start : start + n_pos + n_neg]
        if unknown[cid] and not unknown[cid].isdisjoint(range(start, start + n_pos + n_neg)):
            missing = np.flatnonzero(r < 0)
            j = int(missing[0])
            key, j, doc_id = (
                ("pos_doc", j, item.pos_ids[j])
                if j < n_pos
                else ("neg_doc", j - n_pos, item.neg_ids[j - n_pos])
            )
            more = f" ({missing.size - 1} more unknown ids in this record)" if missing.size > 1 else ""
            yield item.rec.err(
                f"{key}[{j}]",
                f"unknown document id {doc_id!r} in corpus {cid!r} ({corpora[cid].path}){more}; expected an id present in the corpus",
            )
            continue
        yield item.example, (r[:n_pos], r[n_pos:], _NO_ROWS)


def _corpus_id_items(
    path: Path, corpora: dict[str, Corpus], raws: Iterator[_Raw], notes: Counter
) -> Iterator[tuple[Example, Rows] | DataError]:
    batch: list[_Pending | DataError] = []
    for raw in raws:
        rec = _Rec(path, raw)
        if not isinstance(raw.obj, dict):
            batch.append(rec.err("", f"got {jtype(raw.obj)}; expected a training record object"))
        else:
            try:
                batch.append(_corpus_id_record(rec, corpora))
                _note_unread(raw.obj, "nemo-corpus-id", notes)
            except DataError as err:
                batch.append(err)
        if len(batch) >= CHUNK:
            yield from _lookup_pending(batch, corpora)
            batch = []
    yield from _lookup_pending(batch, corpora)


# ---------------------------------------------------------------------------------------------------------
# Public reading API


@dataclass
class _Chunk:
    """Examples read together.

    ``rows[i]`` is None for an inline example (its documents are in the Example), else the rows of its
    positives, negatives and history in ``corpora[example.corpus_id]``; such an Example comes with empty
    document lists (fill them with :func:`fill_documents`).
    """

    examples: list[Example]
    rows: list[Rows | None]
    corpora: dict[str, Corpus]


def expand_paths(paths: str | Path | Iterable[str | Path], *, corpora: bool = False) -> list[Path]:
    """Files and BEIR directories to read, from files, directories and glob patterns.

    A directory that is a BEIR dataset stays one entry; other directories contribute their ``*.jsonl`` and
    ``*.json`` files recursively, except inside NeMo corpus directories (``merlin_metadata.json``), which are
    read through the corpus-id JSON that lists them (or listed themselves when ``corpora=True``).

    Raises:
        DataError: a path that does not exist or a pattern that matches nothing.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists() and glob.has_magic(str(p)):
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            if not matches:
                raise DataError("no files match this pattern", p)
            out.extend(expand_paths(matches, corpora=corpora))
        elif p.is_dir():
            if beir.is_beir_dir(p) or (p / MERLIN_METADATA).is_file():
                out.append(p)
            else:
                out.extend(_walk(p, corpora))
        elif p.is_file():
            out.append(p)
        else:
            raise DataError("file or directory not found", p)
    return out


def _walk(directory: Path, corpora: bool) -> list[Path]:
    out: list[Path] = []
    for child in sorted(directory.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            if beir.is_beir_dir(child):
                out.append(child)
            elif (child / MERLIN_METADATA).is_file():
                if corpora:
                    out.append(child)
            else:
                out.extend(_walk(child, corpora))
        elif child.suffix in DATA_SUFFIXES and child.name != MERLIN_METADATA:
            out.append(child)
    return out


def iter_chunks(
    path: str | Path,
    *,
    split: str = "train",
    skip_invalid: bool = False,
    stats: ReadStats | None = None,
    cache_dir: str | Path | None = None,
) -> Iterator[_Chunk]:
    """Examples of one file or BEIR directory in chunks, with corpus rows for documents given by id.

    This is what :func:`iter_examples` and the Arrow store are built on; see :func:`iter_examples`.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    cache = Path(cache_dir) if cache_dir is not None else None
    corpora: dict[str, Corpus] = {}
    if path.is_dir():
        fmt = detect_format(path)
        data = beir.load_beir(path, split, cache_dir=cache)
        corpora[data.corpus.corpus_id] = data.corpus
        stats.corpora[data.corpus.corpus_id] = len(data.corpus)
        stats.notes.update(data.notes)
        items: Iterable[Any] = beir.iter_beir_items(data, notes=stats.notes)
    else:
        fmt, layout = _detect(path)
        if fmt == "nemo-corpus-id":
            corpora, raws = _corpus_id_stream(path, cache)
            stats.corpora.update({cid: len(c) for cid, c in corpora.items()})
            items = _corpus_id_items(path, corpora, raws, stats.notes)
        else:
            items = _inline_items(path, fmt, layout, stats.notes)
    stats.formats[str(path)] = fmt
    chunk = _Chunk([], [], corpora)
    for item in items:
        if isinstance(item, DataError):
            if not skip_invalid:
                raise item
            stats.skipped += 1
            stats.errors.append(item)
            continue
        example, rows = item if isinstance(item, tuple) else (item, None)
        chunk.examples.append(example)
        chunk.rows.append(rows)
        stats.read += 1
        if len(chunk.examples) >= CHUNK:
            yield chunk
            chunk = _Chunk([], [], corpora)
    if chunk.examples:
        yield chunk


def iter_examples(
    path: str | Path | Iterable[str | Path],
    *,
    split: str = "train",
    skip_invalid: bool = False,
    stats: ReadStats | None = None,
    resolve: bool = True,
    cache_dir: str | Path | None = None,
) -> Iterator[Example]:
    """Stream canonical Examples from a training file, a BEIR directory, or several (directories and globs
    are expanded with :func:`expand_paths`).

    Args:
        path: file(s) in any supported format, or a BEIR dataset directory.
        split: BEIR qrels split (``qrels/{split}.tsv``); ignored for files.
        skip_invalid: skip invalid records, counting them in ``stats``, instead of raising the first.
        stats: a :class:`ReadStats` to fill with counts, errors, formats and corpus sizes.
        resolve: fill the texts of documents given by id (corpus-id JSON, BEIR) from their corpus. With
            False they come with ``text=""`` (faster; enough for validation).
        cache_dir: where corpus conversions are cached (default ``$DENSETUNE_CACHE`` or ~/.cache/densetune).

    Yields:
        Examples in file order, ``source="path:line"``.

    Raises:
        DataError: the first invalid record (unless ``skip_invalid``), or a problem with a whole file.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    for p in expand_paths(paths):
        for chunk in iter_chunks(p, split=split, skip_invalid=skip_invalid, stats=stats, cache_dir=cache_dir):
            fill_documents(chunk, text=resolve)
            yield from chunk.examples


def fill_documents(chunk: _Chunk, *, text: bool = True) -> None:
    """Give the chunk's corpus-backed Examples their documents, one bulk take per corpus.

    With ``text=False`` documents carry only their ids (cheaper).
    """
    wanted: dict[str, list[np.ndarray]] = {}
    for example, rows in zip(chunk.examples, chunk.rows):
        if rows is not None:
            wanted.setdefault(example.corpus_id, []).extend(rows)
    docs = {
        cid: iter(chunk.corpora[cid].docs(np.concatenate(parts), text=text)) for cid, parts in wanted.items()
    }
    for example, rows in zip(chunk.examples, chunk.rows):
        if rows is None:
            continue
        it = docs[example.corpus_id]
        example.positives = [next(it) for _ in range(len(rows[0]))]
        example.negatives = [next(it) for _ in range(len(rows[1]))]
        example.history = [next(it) for _ in range(len(rows[2]))]


def write_examples(examples: Iterable[Example], path: str | Path, fmt: str) -> int:
    """Write Examples in ``fmt`` (inline | corpus-id | flag | tevatron); see :func:`densetune.data.convert.write_examples`."""
    from densetune.data.convert import write_examples as _write

    return _write(examples, path, fmt)
