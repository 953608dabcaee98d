"""A corpus source's rows as the one document table: ``DOC_SCHEMA`` (id, text, title, image, extra).

Parquet batches are renamed and cast (:func:`parquet_batches`), JSON lines or a JSON list checked row by row
(:func:`jsonl_batches`); every bad row becomes a :class:`DataError` naming the file, the line (or row) and
the field, collected so a corpus reports all its problems at once. A row's other fields (BEIR
``metadata``, extra Parquet columns) are kept as JSON in ``extra`` (:func:`extra_json`). Inline documents of
training data use the same table (:mod:`densetune.data.store`).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from densetune.data.jsonrecords import carries_value, iter_text_lines, jtype, parse_json_line
from densetune.errors import DataError

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
    if not fields:  # the common case: nothing to keep
        return ""
    kept = {k: v for k, v in fields.items() if carries_value(v)}
    return json.dumps(kept, ensure_ascii=False, default=str) if kept else ""


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


def parquet_batches(path: Path, errors: list[DataError]) -> Iterator[pa.Table]:
    """Corpus rows from a Parquet file, batch by batch; bad rows are added to ``errors``."""
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


def jsonl_batches(path: Path, errors: list[DataError]) -> Iterator[pa.Table]:
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
