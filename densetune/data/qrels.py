"""Relevance judgements from whatever file a user has: qrels files, NeMo query files, training files with ids.

:func:`load_qrels` reads, by content:

- a TREC qrels file (``qid 0 docid rel``) or a BEIR qrels TSV (``query-id  corpus-id  score``), via
  :func:`densetune.data.trec.read_qrels`;
- a BEIR dataset directory (its ``qrels/{split}.tsv``);
- a NeMo query file (classic NeMo's ``test_queries.jsonl``: ``query``, ``query_id``, ``doc_id``, one per line;
  ``doc_id`` names the relevant document, or a list of them): each gets relevance 1;
- a training file whose positives carry document ids (NeMo corpus-id JSON, GPT-embedding JSONL with
  ``query_id`` + ``doc_id``, a BEIR training set): each positive gets relevance 1.

So ``densetune evaluate --qrels test_queries.jsonl`` scores a run built from the same query file.
"""

from __future__ import annotations

from pathlib import Path

from densetune.data.jsonrecords import iter_text_lines, jtype, parse_json_line, sniff_layout
from densetune.data.records import text_doc_id
from densetune.errors import DataError

Qrels = dict[str, dict[str, int]]

_QUERY_ID_KEYS = ("query_id", "question_id", "_id")
_TRAINING_KEYS = ("pos_doc", "pos", "positive_passages", "corpus", "data")
# any field that makes a record a training example rather than a labelled query
_EXAMPLE_KEYS = {
    *_TRAINING_KEYS,
    "neg_doc",
    "neg",
    "history",
    "answers",
    "teacher_scores",
    "negative_passages",
}
_TEXT_ID_PREFIX = text_doc_id("")[:4]  # "txt-": ids made from texts, which no document file uses


def load_qrels(path: str | Path, split: str = "test") -> Qrels:
    """``{query id: {document id: relevance}}`` from any of the sources in the module docstring.

    Raises:
        DataError: a missing file, a line or record without a query id or document id, or a training file
            whose positives have no ids (inline texts cannot be matched to a document file); with the
            file, line and field.
    """
    from densetune.data.trec import read_qrels

    path = Path(path)
    if path.is_dir():
        from densetune.data.beir import is_beir_dir, qrels_path

        if not is_beir_dir(path):
            raise DataError(
                "not a BEIR directory (corpus.jsonl, queries.jsonl, qrels/); expected qrels", path
            )
        return read_qrels(qrels_path(path, split))
    if not path.is_file():
        raise DataError("qrels file not found", path)
    if _first_char(path) not in ("{", "["):
        return read_qrels(path)
    layout = sniff_layout(path)
    if layout == "jsonl" and _is_query_file(path):
        return read_query_file_qrels(path)
    return _training_file_qrels(path)


def read_query_file_qrels(path: str | Path) -> Qrels:
    """Qrels from a NeMo query file: each line's ``doc_id`` (a string or a list) is relevant (1) to its query."""
    path = Path(path)
    qrels: Qrels = {}
    for lineno, text in iter_text_lines(path):
        if isinstance(text, DataError):
            raise text
        obj = parse_json_line(text, path, lineno, "one query object per line")
        if not isinstance(obj, dict):
            raise DataError(f"got {jtype(obj)}; expected {{query, query_id, doc_id}}", path, lineno)
        qid = next((obj[k] for k in _QUERY_ID_KEYS if obj.get(k) not in (None, "")), None)
        if isinstance(qid, bool) or not isinstance(qid, (str, int)):
            raise DataError(
                f"{'missing' if qid is None else 'got ' + jtype(qid)}; expected the query id as a string",
                path,
                lineno,
                "query_id",
            )
        docs = obj.get("doc_id")
        docs = [docs] if isinstance(docs, (str, int)) and not isinstance(docs, bool) else docs
        if not isinstance(docs, list) or not docs or not all(_is_id(d) for d in docs):
            raise DataError(
                f"{'missing' if docs is None else 'got ' + jtype(docs)}; expected the relevant document's id "
                "(a string, or a list of them)",
                path,
                lineno,
                "doc_id",
            )
        judged = qrels.setdefault(str(qid), {})
        for d in docs:
            judged[str(d)] = 1
    if not qrels:
        raise DataError("no queries found", path)
    return qrels


def _training_file_qrels(path: Path) -> Qrels:
    from densetune.data.formats import iter_examples

    qrels: Qrels = {}
    for ex in iter_examples(path, resolve=False):
        ids = [d.id for d in ex.positives]
        if not ids or any(not i or i.startswith(_TEXT_ID_PREFIX) for i in ids):
            raise DataError(
                "positives have no document ids, so they cannot be matched to a document file; expected a "
                "NeMo query file (query_id, doc_id), a corpus-id training file, or TREC / BEIR qrels",
                ex.source or path,
            )
        judged = qrels.setdefault(ex.query_id, {})
        for i in ids:
            judged[i] = 1
    if not qrels:
        raise DataError("no queries found", path)
    return qrels


def _is_id(value: object) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) != ""


def _first_char(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1].decode("latin-1")


def _is_query_file(path: Path) -> bool:
    """Whether the first record looks like a NeMo query line (``doc_id`` or a query, and no training fields)."""
    for lineno, text in iter_text_lines(path):
        if isinstance(text, DataError):
            raise text
        obj = parse_json_line(text, path, lineno, "one JSON object per line")
        if not isinstance(obj, dict) or any(k in obj for k in _TRAINING_KEYS):
            return False
        return any(k in obj for k in ("doc_id", "query", "question"))
    return False


def evaluation_file_kind(path: str | Path) -> str | None:
    """``nemo-queries`` (classic NeMo query file: ``query_id``, ``query``, ``doc_id`` labels, no training
    fields), ``nemo-docs`` (document file: ``doc_id`` + ``pos_doc`` and no query), or None, from the first
    record of a JSON-lines file. Such files feed ``encode`` / ``evaluate``, not training."""
    path = Path(path)
    if not path.is_file() or _first_char(path) != "{":
        return None
    for lineno, text in iter_text_lines(path):
        if isinstance(text, DataError):
            raise text
        obj = parse_json_line(text, path, lineno, "one JSON object per line")
        if not isinstance(obj, dict):
            return None
        keys = set(obj)
        if {"pos_doc", "doc_id"} <= keys and not keys & {"query", "question"}:
            return "nemo-docs"
        if "doc_id" in keys and keys & {"query", "question"} and not keys & _EXAMPLE_KEYS:
            return "nemo-queries"
        return None
    return None
