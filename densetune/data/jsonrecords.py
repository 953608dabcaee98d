"""JSON training files as raw records, and typed access to a record's fields.

The JSON helpers every reader shares (:func:`iter_text_lines`, :func:`parse_json_line`, :func:`jtype`,
lone-surrogate checks) give errors that name the file and line. A training file is sniffed for its layout
(JSON lines, a JSON list, one JSON object) and read record by record; a JSON document is read incrementally
(:class:`JsonStream`), so a file of millions of records keeps memory flat. :class:`Record` reads one
record's fields; every problem becomes a :class:`DataError` naming the file, line and field.
:data:`READ_FIELDS` says which fields each format reads; :func:`unread_fields` keeps the rest for
``Example.extra`` and counts them. The formats themselves live in :mod:`densetune.data.formats` and
:mod:`densetune.data.corpus_id`.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from densetune.data.records import Doc, text_doc_id
from densetune.errors import DataError
from densetune.paths import check_input_file

__all__ = [
    "READ_FIELDS",
    "JsonStream",
    "RawRecord",
    "Record",
    "carries_value",
    "check_text_head",
    "count_text_lines",
    "find_lone_surrogate",
    "iter_raw_records",
    "iter_text_lines",
    "jsonl_records",
    "jtype",
    "may_hold_surrogate",
    "unread_fields",
    "other_fields",
    "parse_json_line",
    "sniff_layout",
    "text_lines",
]

_EMPTY_DOC = "empty document (no text, title or image); expected the passage's text"
_SNIFF_BYTES = 1 << 16
_MAX_FIRST_LINE = 16 << 20

_BINARY_MAGIC = {
    b"PAR1": "a Parquet file",
    b"\x1f\x8b": "gzip-compressed (decompress it first)",
    b"PK\x03\x04": "a zip archive (extract it first)",
    b"ARROW1": "an Arrow file",
    b"\x89HDF": "an HDF5 file",
}


# ---------------------------------------------------------------------------------------------------------
# JSON values and lines: type names for messages, invalid Unicode, one line at a time


def carries_value(value: Any) -> bool:
    """False for a field that says nothing: null or an empty object / list / string (0 and false do say)."""
    return value is not None and not (isinstance(value, (dict, list, str)) and not value)


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
        yield from text_lines(f, path)


def text_lines(
    raws: Iterable[bytes], path: str | Path, first_line: int = 1
) -> Iterator[tuple[int, str | DataError]]:
    """:func:`iter_text_lines` of raw lines (``bytes``, numbered from ``first_line``): a block of a file."""
    for lineno, raw in enumerate(raws, first_line):
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


# A line that starts with a printable ASCII character is a record line whatever follows (str.strip() keeps it).
_MAYBE_BLANK = re.compile(rb"\n(?![\x21-\x7e])")


def count_text_lines(block: bytes, path: str | Path, first_line: int = 1) -> int:
    """How many lines :func:`text_lines` yields for ``block`` (whole lines of a file from ``first_line``).

    Without decoding when every line starts with a printable ASCII character (JSON lines do); otherwise as
    :func:`text_lines` decides, line by line.
    """
    if not block:
        return 0
    end = len(block) - 1 if block.endswith(b"\n") else len(block)
    # (line 1 may start with a byte-order mark)
    if first_line > 1 and 0x21 <= block[0] <= 0x7E and not _MAYBE_BLANK.search(block, 0, end):
        return block.count(b"\n", 0, end) + 1
    return sum(1 for _ in text_lines(block.split(b"\n"), path, first_line))


# ---------------------------------------------------------------------------------------------------------
# A file's layout, and its raw records


def check_text_head(head: bytes, path: str | Path, expected: str) -> None:
    """Refuse a file whose first bytes show it is not UTF-8 text: a UTF-16/32 byte-order mark, a known
    binary format, or NUL bytes (also UTF-16 without a byte-order mark).

    Raises:
        DataError: naming the file, the line and what was expected (``expected``: e.g. "a TREC run").
    """
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
            raise DataError(f"binary file ({what}); expected {expected}", path, 1)
    if b"\x00" in head:
        line = head[: head.index(b"\x00")].count(b"\n") + 1
        raise DataError(f"binary file (contains NUL bytes); expected {expected}", path, line)


def sniff_layout(path: Path) -> str:
    """Check a data file is non-empty UTF-8 text and return its layout: ``jsonl``, ``json-array``, ``json-object``.

    Raises:
        DataError: empty, binary, UTF-16/32 or otherwise not UTF-8, or not starting with ``{`` / ``[``.
    """
    check_input_file(path, "training file")  # a FIFO or /dev/zero would block or never end
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head.strip():
        raise DataError("empty file; expected JSON lines or a JSON document with training records", path)
    check_text_head(head, path, "UTF-8 JSON lines or a JSON document")
    # Bytes that are not UTF-8 later in the file are reported where they are (per line in JSON lines);
    # here only the start of the file must be readable to tell its layout.
    text = head.decode("utf-8", errors="replace")
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped:
        raise DataError("empty file (only whitespace); expected training records", path)
    prefix = text[: len(text) - len(stripped)]  # byte-order marks and whitespace: valid, so it re-encodes
    line = prefix.count("\n") + 1
    if stripped[0] == "\ufffd":
        start = len(prefix.encode("utf-8"))  # the offending byte (a lone 0xEF is not a byte-order mark)
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


class JsonStream:
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
class RawRecord:
    """One raw record: the parsed object (or the DataError parsing it), its line, index and field prefix."""

    obj: Any
    line: int
    index: int
    prefix: str = ""


def iter_raw_records(path: Path, layout: str) -> Iterator[RawRecord]:
    """Raw records of a non-corpus-id file: JSON lines, elements of a JSON list, or one JSON object."""
    if layout == "jsonl":
        yield from jsonl_records(iter_text_lines(path), path)
        return
    with open(path, "rb") as f:
        stream = JsonStream(f, path)
        if layout == "json-array":
            stream.expect("[", "'['")
            for index, (obj, line) in enumerate(stream.iter_array()):
                yield RawRecord(obj, line, index, f"[{index}]")
        else:
            obj, line = stream.value()
            yield RawRecord(obj, line, 0)
        stream.end()


def jsonl_records(
    lines: Iterable[tuple[int, str | DataError]], path: Path, first_index: int = 0
) -> Iterator[RawRecord]:
    """Raw records of JSON lines (from :func:`text_lines`), numbered from ``first_index``."""
    for index, (lineno, text) in enumerate(lines, first_index):
        if isinstance(text, DataError):
            yield RawRecord(text, lineno, index)
            continue
        try:
            obj = parse_json_line(text, path, lineno, "one JSON object per line")
        except DataError as err:
            obj = err
        yield RawRecord(obj, lineno, index)


# ---------------------------------------------------------------------------------------------------------
# One record's fields, with errors that say where


class Record:
    """A record being converted: its fields plus where it is, for error messages."""

    def __init__(self, path: Path, raw: RawRecord):
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
                if not item.strip():
                    raise self.err(f"{key}[{j}]", _EMPTY_DOC)
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
        if not (text.strip() or item.get("title") or item.get("image")):
            raise self.err(f"{fld}.{text_key}", _EMPTY_DOC)
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


# The record fields each format reads; any other field goes to Example.extra and is counted in ReadStats.notes.
READ_FIELDS = {
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
READ_FIELDS["sbert"] = READ_FIELDS["nemo-inline"]


def other_fields(
    obj: dict, read: Collection[str], notes: Counter | None, note: Callable[[str], str]
) -> dict[str, Any]:
    """The fields of ``obj`` outside ``read`` that carry a value (for ``Example.extra``), counted in ``notes``.

    Counted (under ``note(field name)``) because such a field never trains, and is often a mistake (``negs``
    for ``neg``). A field that carries nothing (null, ``{}``, ``[]``, ``""``) is neither kept nor counted.
    """
    extra = {key: value for key, value in obj.items() if key not in read and carries_value(value)}
    if notes is not None:
        for key in extra:
            notes[note(key)] += 1
    return extra


def unread_fields(obj: dict, fmt: str, notes: Counter) -> dict[str, Any]:
    """:func:`other_fields` of a training record: the fields ``fmt`` does not read."""
    fields = READ_FIELDS[fmt]
    if obj.keys() <= fields:  # the common case, without building a dict per record
        return {}
    return other_fields(
        obj,
        fields,
        notes,
        lambda key: (
            f"records with field {key!r}, which the {fmt} format does not read (kept as extra, not trained on)"
        ),
    )
