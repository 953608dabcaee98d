"""What the retrieval commands (encode, bm25, evaluate) read: queries as ids and texts, documents by position.

- Queries: a query file, BEIR ``queries.jsonl`` (``_id``, ``text``) or NeMo query file (``query_id``,
  ``query``; also ``question``), or a BEIR directory with a split (only the queries of that split's qrels,
  in ``queries.jsonl`` order, read by :func:`densetune.data.beir.read_queries`).
- Documents: a NeMo document file (``doc_id``, ``pos_doc`` per line; told apart by
  :func:`densetune.data.qrels.evaluation_file_kind`), or anything :func:`densetune.data.corpus.load_corpus`
  reads, as a :class:`DocSource`. A document's text is ``title + " " + text`` when it has a title
  (:func:`densetune.data.corpus.doc_text`, the BEIR and sentence-transformers convention).

Lines are read with :mod:`densetune.data.jsonrecords`, so every error names the file, the line and the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densetune.data.jsonrecords import iter_text_lines, jtype, parse_json_line
from densetune.errors import DataError, DensetuneError
from densetune.paths import check_input_file

QUERY_ID_KEYS = ("_id", "query_id", "id", "question_id")
QUERY_TEXT_KEYS = ("text", "query", "question")


def iter_objects(path: Path, expected: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSON-lines file of objects."""
    for lineno, line in iter_text_lines(path):
        if isinstance(line, DataError):
            raise line
        obj = parse_json_line(line, path, lineno, expected)
        if not isinstance(obj, dict):
            raise DataError(f"got {jtype(obj)}; expected {expected}", path, lineno)
        yield lineno, obj


def _pick(obj: dict, keys: tuple[str, ...], path: Path, lineno: int, what: str) -> str:
    for key in keys:
        value = obj.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise DataError(f"expected {what} as a string, got {type(value).__name__}", path, lineno, key)
            return str(value)
    raise DataError(f"missing {what}; expected one of the fields {', '.join(keys)}", path, lineno)


def read_queries(path: str | Path, split: str = "test") -> tuple[list[str], list[str]]:
    """Query ids and texts from a query file or a BEIR directory.

    Args:
        path: BEIR ``queries.jsonl`` (``_id``, ``text``), NeMo query file (``query_id``, ``query``; also
            ``question``), or a BEIR directory.
        split: for a BEIR directory: keep only the queries in ``qrels/{split}.tsv``.

    Raises:
        DataError: missing file, bad line, missing field, duplicate id, or a qrels query with no text.
    """
    path = Path(path)
    if path.is_dir():
        return _beir_split_queries(path, split)
    check_input_file(path, "query file")
    rows = (
        (
            lineno,
            _pick(obj, QUERY_ID_KEYS, path, lineno, "the query id"),
            _pick(obj, QUERY_TEXT_KEYS, path, lineno, "the query text"),
        )
        for lineno, obj in iter_objects(path, "one query object per line")
    )
    return _unique(path, rows, "query", "queries")


def _unique(
    path: Path, rows: Iterator[tuple[int, str, str]], noun: str, plural: str, fld: str | None = None
) -> tuple[list[str], list[str]]:
    """Ids and texts of ``(line, id, text)`` rows; a repeated id or no rows at all is a DataError."""
    ids: list[str] = []
    texts: list[str] = []
    seen: set[str] = set()
    for lineno, i, text in rows:
        if i in seen:
            raise DataError(f"duplicate {noun} id {i!r}", path, lineno, fld)
        seen.add(i)
        ids.append(i)
        texts.append(text)
    if not ids:
        raise DataError(f"no {plural} found", path)
    return ids, texts


def _beir_split_queries(path: Path, split: str) -> tuple[list[str], list[str]]:
    from densetune.data.beir import is_beir_dir, qrels_path
    from densetune.data.beir import read_queries as read_beir_queries
    from densetune.data.trec import read_qrels

    if not is_beir_dir(path):
        raise DataError("not a BEIR directory; expected corpus.jsonl, queries.jsonl and qrels/", path)
    qrels = read_qrels(qrels_path(path, split))
    queries = read_beir_queries(path / "queries.jsonl")
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise DataError(
            f"{len(missing)} qrels queries have no text in queries.jsonl (first: {missing[0]!r})",
            path / "qrels" / f"{split}.tsv",
        )
    keep = [(i, t) for i, t in queries.items() if i in qrels]
    return [i for i, _ in keep], [t for _, t in keep]


class DocSource:
    """Documents to encode, by position: ``ids`` in corpus order and ``texts(start, stop)``."""

    def __init__(self, ids: Sequence[str], texts_fn: Callable[[int, int], list[str]], path: Path | str = ""):
        self.ids = list(ids)
        self._texts_fn = texts_fn
        self.path = str(path)

    def __len__(self) -> int:
        return len(self.ids)

    def texts(self, start: int, stop: int) -> list[str]:
        """Model input texts of documents ``start..stop-1``."""
        return self._texts_fn(start, stop)

    @classmethod
    def from_lists(cls, ids: Sequence[str], texts: Sequence[str], path: Path | str = "") -> DocSource:
        if len(ids) != len(texts):
            raise DensetuneError(f"{len(ids)} document ids for {len(texts)} texts")
        texts = list(texts)
        return cls(ids, lambda a, b: texts[a:b], path)

    @classmethod
    def from_corpus(cls, corpus) -> DocSource:
        """Wrap a :class:`densetune.data.corpus.Corpus` (memory-mapped; texts rendered with doc_text)."""
        from densetune.data.corpus import doc_text

        def texts(a: int, b: int) -> list[str]:
            return [doc_text(d) for d in corpus.docs(np.arange(a, b))]

        return cls(corpus.ids, texts, corpus.path or "")


def read_document_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Ids and texts of a NeMo document file: a ``doc_id`` and a non-empty ``pos_doc`` string per line,
    ids unique.

    Raises:
        DataError: a bad line, a missing or ill-typed field, a duplicate id, or no documents.
    """
    path = Path(path)
    rows = (
        (lineno, *_document(obj, path, lineno))
        for lineno, obj in iter_objects(path, "one document object per line {doc_id, pos_doc}")
    )
    return _unique(path, rows, "document", "documents", "doc_id")


def _document(obj: dict[str, Any], path: Path, lineno: int) -> tuple[str, str]:
    did = obj.get("doc_id")
    if isinstance(did, bool) or not isinstance(did, (str, int)) or str(did) == "":
        raise DataError("missing; expected the document id as a string", path, lineno, "doc_id")
    text = obj.get("pos_doc")
    if not isinstance(text, str) or not text.strip():
        raise DataError("expected the document text as a non-empty string", path, lineno, "pos_doc")
    return str(did), text


def is_document_file(path: Path) -> bool:
    """Whether ``path`` is a NeMo document file (``.jsonl`` whose first record has ``doc_id`` and
    ``pos_doc``); an unreadable first line is left to the corpus reader to report."""
    from densetune.data.qrels import evaluation_file_kind

    if not (path.is_file() and path.suffix == ".jsonl"):
        return False
    try:
        return evaluation_file_kind(path) == "nemo-docs"
    except DataError:
        return False


def open_corpus(path: str | Path, *, cache_dir: str | Path | None = None) -> DocSource:
    """The documents of a NeMo document file (``doc_id``, ``pos_doc``) or of any corpus load_corpus reads.

    Raises:
        DataError: missing path, bad rows, duplicate ids.
    """
    path = Path(path)
    if not path.is_dir():
        check_input_file(path, "corpus")  # a FIFO or a device is named, never opened
    if is_document_file(path):
        return DocSource.from_lists(*read_document_file(path), path)
    from densetune.data.corpus import load_corpus

    return DocSource.from_corpus(load_corpus(path, cache_dir=cache_dir))
