"""BEIR dataset directories: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv``.

:func:`load_beir` gives the corpus (memory-mapped, see :mod:`densetune.data.corpus`), the queries and one
split's qrels, for the retrieval modules. As training data, a split becomes one Example per query with at
least one relevant document: positives are the documents with relevance > 0 (in qrels order), negatives
are empty (mine them with ``densetune mine``). The corpus id and the task are the directory name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from densetune.data.corpus import Corpus, load_corpus
from densetune.data.jsonrecords import iter_text_lines, jtype, other_fields, parse_json_line
from densetune.data.records import Example
from densetune.data.trec import Qrels, read_qrels
from densetune.errors import DataError

_CHUNK = 4096


def is_beir_dir(path: str | Path) -> bool:
    """True for a directory holding ``corpus.jsonl`` and ``queries.jsonl``."""
    path = Path(path)
    return (path / "corpus.jsonl").is_file() and (path / "queries.jsonl").is_file()


@dataclass
class BeirData:
    """One BEIR split.

    Attributes:
        corpus: the documents (``corpus_id`` = directory name).
        queries: ``{query id: text}`` for every query in queries.jsonl (all splits).
        qrels: ``{query id: {doc id: relevance}}`` of the split, as in the file (relevance 0 included).
        path: the dataset directory.
        split: the split name.
        qrels_path: the qrels file read.
        notes: counts of what is read but not trained on (query fields other than ``_id`` and ``text``).
        query_extra: ``{query id: {field: value}}``, the query fields other than ``_id`` and ``text`` that
            carry a value (SciFact's ``metadata``); they become ``Example.extra``.
    """

    corpus: Corpus
    queries: dict[str, str]
    qrels: Qrels
    path: Path
    split: str
    qrels_path: Path
    notes: Counter = field(default_factory=Counter)
    query_extra: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_queries(
    path: str | Path, notes: Counter | None = None, extras: dict[str, dict[str, Any]] | None = None
) -> dict[str, str]:
    """``{_id: text}`` from a BEIR ``queries.jsonl``.

    Args:
        path: the queries file.
        notes: if given, counts the queries with other fields, per field name.
        extras: if given, receives ``{_id: {field: value}}`` for the other fields that carry a value.

    Raises:
        DataError: invalid JSON, a missing/ill-typed ``_id`` or ``text``, or a repeated ``_id`` (with line).
    """
    path = Path(path)
    queries: dict[str, str] = {}
    for lineno, line in iter_text_lines(path):
        if isinstance(line, DataError):
            raise line
        obj = parse_json_line(line, path, lineno, "one query object per line")
        if not isinstance(obj, dict):
            raise DataError(f"got {jtype(obj)}; expected a query object {{_id, text}}", path, lineno)
        qid = obj.get("_id")
        if isinstance(qid, bool) or not isinstance(qid, (str, int)) or qid == "":
            raise DataError(
                f"{'missing' if qid is None else 'got ' + jtype(qid)}; expected the query id as a string",
                path,
                lineno,
                "_id",
            )
        text = obj.get("text")
        if not isinstance(text, str):
            raise DataError(
                f"{'missing' if text is None else 'got ' + jtype(text)}; expected the query text as a string",
                path,
                lineno,
                "text",
            )
        qid = str(qid)
        if qid in queries:
            raise DataError(f"duplicate query id {qid!r}; expected each _id once", path, lineno, "_id")
        queries[qid] = text
        if len(obj) > 2 and (notes is not None or extras is not None):
            kept = other_fields(
                obj,
                ("_id", "text"),
                notes,
                lambda key: (
                    f"queries with field {key!r} in {path.name}, which densetune does not read "
                    "(kept as extra, not trained on)"
                ),
            )
            if kept and extras is not None:
                extras[qid] = kept
    return queries


def qrels_path(directory: str | Path, split: str) -> Path:
    """``qrels/{split}.tsv``; a DataError naming the splits that exist when it is missing."""
    path = Path(directory) / "qrels" / f"{split}.tsv"
    if not path.is_file():
        have = sorted(p.stem for p in (Path(directory) / "qrels").glob("*.tsv"))
        raise DataError(
            f"no qrels for split {split!r}; expected one of: {', '.join(have) or '(no qrels/*.tsv)'}", path
        )
    return path


def load_beir(directory: str | Path, split: str = "test", *, cache_dir: str | Path | None = None) -> BeirData:
    """Load a BEIR dataset directory's corpus, queries and one split's qrels.

    Args:
        directory: folder with corpus.jsonl, queries.jsonl and qrels/{split}.tsv.
        split: qrels split (``train``, ``dev``, ``test``).
        cache_dir: where the corpus conversion is cached.

    Raises:
        DataError: missing files or bad rows, with file and line.
    """
    directory = Path(directory)
    if not is_beir_dir(directory):
        raise DataError(
            "not a BEIR dataset directory; expected corpus.jsonl, queries.jsonl and qrels/*.tsv", directory
        )
    qpath = qrels_path(directory, split)
    notes: Counter = Counter()
    query_extra: dict[str, dict[str, Any]] = {}
    return BeirData(
        corpus=load_corpus(directory, cache_dir=cache_dir, corpus_id=directory.name),
        queries=read_queries(directory / "queries.jsonl", notes, query_extra),
        qrels=read_qrels(qpath),
        path=directory,
        split=split,
        qrels_path=qpath,
        notes=notes,
        query_extra=query_extra,
    )


def _first_lines(path: Path) -> dict[str, int]:
    """Line of each query id's first qrels row (for ``source`` and error messages)."""
    first: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            parts = raw.split("\t") if "\t" in raw else raw.split()
            if parts and parts[0].strip():
                first.setdefault(parts[0].strip(), lineno)
    return first


def _pair_line(path: Path, qid: str, did: str) -> int | None:
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            parts = [p.strip() for p in (raw.split("\t") if "\t" in raw else raw.split())]
            if len(parts) >= 3 and parts[0] == qid and parts[-2] == did:
                return lineno
    return None


def iter_beir_items(
    data: BeirData, notes: Counter | None = None
) -> Iterator[tuple[Example, tuple] | DataError]:
    """Examples of a split with their corpus rows (positives = relevance > 0), or a DataError per bad query.

    Queries whose qrels hold no relevant document are left out and counted in ``notes``.
    """
    notes = notes if notes is not None else Counter()
    lines = _first_lines(data.qrels_path)
    cid = data.corpus.corpus_id
    qids = list(data.qrels)
    empty = np.zeros(0, dtype=np.int64)
    for start in range(0, len(qids), _CHUNK):
        batch = qids[start : start + _CHUNK]
        wanted = [[d for d, rel in data.qrels[q].items() if rel > 0] for q in batch]
        rows = data.corpus.rows([d for ids in wanted for d in ids])
        cursor = 0
        for qid, ids in zip(batch, wanted):
            r = rows[cursor : cursor + len(ids)]
            cursor += len(ids)
            line = lines.get(qid)
            if qid not in data.queries:
                yield DataError(
                    f"unknown query id {qid!r}; expected an _id from queries.jsonl",
                    data.qrels_path,
                    line,
                    "query-id",
                )
                continue
            if not ids:
                notes[
                    f"queries without a relevant document in {data.qrels_path.parent.name}/{data.qrels_path.name}"
                ] += 1
                continue
            missing = np.flatnonzero(r < 0)
            if missing.size:
                did = ids[int(missing[0])]
                yield DataError(
                    f"unknown document id {did!r} in corpus {cid!r} ({data.corpus.path}); expected an _id from corpus.jsonl",
                    data.qrels_path,
                    _pair_line(data.qrels_path, qid, did) or line,
                    "corpus-id",
                )
                continue
            example = Example(  # documents travel as rows (see formats.fill_documents)
                query_id=qid,
                query=data.queries[qid],
                task=cid,
                corpus_id=cid,
                source=f"{data.qrels_path}:{line}",
                extra=dict(data.query_extra.get(qid, ())),
            )
            yield example, (r, empty, empty)
