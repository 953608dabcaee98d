"""Plain-file stage outputs: TREC run files and qrels (TREC 4-column or BEIR TSV), read and written.

Qrels: ``{query_id: {doc_id: relevance}}``; runs: ``{query_id: {doc_id: score}}``. Both keyed by strings.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from itertools import islice
from pathlib import Path

from densetune.caps import MAX_QUERIES, env_cap, notice
from densetune.data.jsonrecords import check_text_head, iter_text_lines
from densetune.errors import DataError
from densetune.paths import atomic_path, check_input_file

logger = logging.getLogger("densetune.retrieval")

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def _lines(path: Path, name: str, what: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each non-blank line of a UTF-8 text file; every problem is a DataError
    naming the file (and line): missing or not a regular file, UTF-16/32, binary, bytes that are not UTF-8."""
    check_input_file(path, name)
    with open(path, "rb") as f:
        check_text_head(f.read(4096), path, what)
    for lineno, line in iter_text_lines(path):
        if isinstance(line, DataError):
            raise line
        yield lineno, line


def read_qrels(path: str | Path) -> Qrels:
    """Read qrels in TREC format (``qid 0 docid rel``) or BEIR TSV (``query-id<TAB>corpus-id<TAB>score``,
    optional header line, CRLF tolerated). Relevance must be an integer. With ``DENSETUNE_MAX_QUERIES=N``
    (:mod:`densetune.caps`) only the first N queries, in file order, are kept.

    Raises:
        DataError: missing or unreadable file, a bad line, a relevance that is not an integer, the same
            (query, document) pair with two different relevances, or no judgement at all; with file and line.
            The same pair repeated with the same relevance is counted and logged as a warning.
    """
    path = Path(path)
    qrels: Qrels = {}
    first_line: dict[tuple[str, str], int] = {}
    repeated = 0
    for lineno, raw in _lines(path, "qrels file", "qrels (TREC: qid iter docid rel, or BEIR TSV)"):
        line = raw.strip()
        parts = line.split("\t") if "\t" in line else line.split()
        if lineno == 1 and parts[0].lower() in ("query-id", "query_id", "qid"):
            continue
        if len(parts) == 4:
            qid, _, did, rel = parts
        elif len(parts) == 3:
            qid, did, rel = parts
        else:
            raise DataError(
                f"expected 3 (BEIR: query-id, corpus-id, score) or 4 (TREC: qid iter docid rel) columns, "
                f"got {len(parts)}",
                path,
                lineno,
            )
        rel_i = _relevance(rel, path, lineno)
        docs = qrels.setdefault(qid, {})
        if did in docs:
            if docs[did] != rel_i:
                raise DataError(
                    f"query {qid!r} document {did!r} judged {docs[did]} on line {first_line[qid, did]} and "
                    f"{rel_i} here; expected one relevance per pair",
                    path,
                    lineno,
                    "score",
                )
            repeated += 1
            continue
        docs[did] = rel_i
        first_line[qid, did] = lineno
    if not qrels:
        raise DataError("no relevance judgements; expected lines 'qid 0 docid rel' or BEIR TSV rows", path)
    if repeated:
        logger.warning(
            "%s: %d repeated (query, document) rows with the same relevance, read once", path, repeated
        )
    cap = env_cap(MAX_QUERIES)  # a smoke run: every line is still read and checked above
    if cap is not None and cap < len(qrels):
        notice(f"{MAX_QUERIES}={cap}: {path} keeps its first {cap} of {len(qrels)} queries")
        qrels = dict(islice(qrels.items(), cap))
    return qrels


def _relevance(text: str, path: Path, lineno: int) -> int:
    """A relevance grade: an integer (``2``, ``-1``; ``1.0`` is read as 1); ``0.5`` is an error, not truncated."""
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"relevance must be an integer, got {text!r}", path, lineno, "score") from None
    if not value.is_integer():
        raise DataError(
            f"relevance must be an integer grade, got {text!r} (not rounded: fix the file)",
            path,
            lineno,
            "score",
        )
    return int(value)


def read_run(path: str | Path) -> Run:
    """Read a TREC run file: ``qid Q0 docid rank score tag`` per line (the rank column is ignored, as
    trec_eval ignores it: order comes from the scores).

    Raises:
        DataError: missing or unreadable file, a line without 6 columns, a score that is not a finite number,
            a document listed twice for a query, or no line at all; with file and line.
    """
    path = Path(path)
    run: Run = {}
    for lineno, raw in _lines(path, "run file", "a TREC run (qid Q0 docid rank score tag)"):
        parts = raw.split()
        if len(parts) != 6:
            raise DataError(
                f"expected 6 columns (qid Q0 docid rank score tag), got {len(parts)}", path, lineno
            )
        try:
            score = float(parts[4])
        except ValueError:
            raise DataError(f"score must be a number, got {parts[4]!r}", path, lineno, "score") from None
        if not math.isfinite(score):
            raise DataError(f"score must be finite, got {parts[4]}", path, lineno, "score")
        docs = run.setdefault(parts[0], {})
        if parts[2] in docs:
            # trec_eval refuses such runs too ("duplicate docs")
            raise DataError(f"document {parts[2]!r} listed twice for query {parts[0]!r}", path, lineno)
        docs[parts[2]] = score
    if not run:
        raise DataError("empty run; expected lines 'qid Q0 docid rank score tag'", path)
    return run


def write_run(run: Mapping[str, Mapping[str, float]], path: str | Path, tag: str = "densetune") -> None:
    """Write a TREC run atomically, each query's documents in trec_eval's order (score descending, then doc
    id descending), so the rank column is the rank trec_eval and :mod:`densetune.retrieval.metrics` use."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
            for rank, (did, score) in enumerate(ranked, 1):
                f.write(f"{qid} Q0 {did} {rank} {score:.9g} {tag}\n")
