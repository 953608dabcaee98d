"""NeMo Automodel corpus-id JSON: ``{"corpus": [{"path": ...}], "data": [...]}``.

The header's corpus directories are loaded (:func:`densetune.data.corpus.load_corpus`) before the data
records are streamed, in two passes when ``data`` comes first. A record's documents are corpus ids; they
are looked up in bulk, :data:`CHUNK` records at a time, one vectorised call per corpus, and travel as corpus
rows until someone asks for the Doc objects (see :func:`densetune.data.formats.iter_examples`). An unknown
id is a :class:`DataError` naming the record's line and field.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from densetune.data.corpus import MERLIN_METADATA, Corpus, load_corpus, read_merlin_metadata
from densetune.data.jsonrecords import JsonStream, RawRecord, Record, jtype, unread_fields
from densetune.data.records import Example
from densetune.errors import DataError

__all__ = ["CHUNK", "Rows", "corpus_id_items", "open_corpus_id"]

CHUNK = 4096  # records per chunk when corpus ids are looked up in bulk


@dataclass
class _Pending:
    """A corpus-id record converted to an Example whose documents still need their rows looked up.

    The Example's document lists stay empty: documents given by id travel as corpus rows, and Doc objects
    are made only when someone asks for them (see :func:`iter_examples`), which keeps conversion fast.
    """

    example: Example
    rec: Record
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


def open_corpus_id(path: Path, cache_dir: Path | None) -> tuple[dict[str, Corpus], Iterator[RawRecord]]:
    """Read the header (corpora) of a corpus-id JSON, then stream its data records (two passes if data comes first)."""
    f = open(path, "rb")  # noqa: SIM115 - closed by the records() generator below
    try:
        stream = JsonStream(f, path)
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
            stream = JsonStream(f, path)
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

    def records() -> Iterator[RawRecord]:
        try:
            if stream.peek() != "[":
                obj, line = stream.value()
                raise DataError(f"got {jtype(obj)}; expected a list of training records", path, line, "data")
            stream.expect("[", "'['")
            for index, (obj, line) in enumerate(stream.iter_array()):
                yield RawRecord(obj, line, index, f"data[{index}]")
            for _ in keys:  # consume the rest of the object so trailing garbage is reported
                stream.value()
            stream.end()
        finally:
            f.close()

    return corpora, records()


_GET_ID = operator.itemgetter("id")
_STR_ONLY = {str}


def _doc_ids(rec: Record, key: str, required: bool) -> list[str]:
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


def _doc_ids_checked(rec: Record, key: str, required: bool) -> list[str]:
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


def _corpus_id_record(rec: Record, corpora: dict[str, Corpus]) -> _Pending:
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


def corpus_id_items(
    path: Path, corpora: dict[str, Corpus], raws: Iterator[RawRecord], notes: Counter
) -> Iterator[tuple[Example, Rows] | DataError]:
    batch: list[_Pending | DataError] = []
    for raw in raws:
        rec = Record(path, raw)
        if not isinstance(raw.obj, dict):
            batch.append(rec.err("", f"got {jtype(raw.obj)}; expected a training record object"))
        else:
            try:
                pending = _corpus_id_record(rec, corpora)
                pending.example.extra = unread_fields(raw.obj, "nemo-corpus-id", notes)
                batch.append(pending)
            except DataError as err:
                batch.append(err)
        if len(batch) >= CHUNK:
            yield from _lookup_pending(batch, corpora)
            batch = []
    yield from _lookup_pending(batch, corpora)
