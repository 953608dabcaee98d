"""Plain-file stage outputs: TREC run files and qrels (TREC 4-column or BEIR TSV), read and written.

Qrels: ``{query_id: {doc_id: relevance}}``; runs: ``{query_id: {doc_id: score}}``. Both keyed by strings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from densetune.errors import DataError

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def read_qrels(path: str | Path) -> Qrels:
    """Read qrels in TREC format (``qid 0 docid rel``) or BEIR TSV (``query-id<TAB>corpus-id<TAB>score``,
    optional header line, CRLF tolerated). Relevance must be an integer."""
    path = Path(path)
    if not path.is_file():
        raise DataError("qrels file not found", path)
    qrels: Qrels = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
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
            try:
                rel_i = int(float(rel))
            except ValueError:
                raise DataError(f"relevance must be an integer, got {rel!r}", path, lineno, "score") from None
            qrels.setdefault(qid, {})[did] = rel_i
    return qrels


def read_run(path: str | Path) -> Run:
    """Read a TREC run file: ``qid Q0 docid rank score tag`` per line (the rank column is ignored, as
    trec_eval ignores it: order comes from the scores).

    Raises:
        DataError: missing file, a line without 6 columns, a score that is not a finite number, or a
            document listed twice for a query; with file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("run file not found", path)
    run: Run = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            parts = raw.split()
            if not parts:
                continue
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
    return run


def write_run(run: Mapping[str, Mapping[str, float]], path: str | Path, tag: str = "densetune") -> None:
    """Write a TREC run atomically, each query's documents in trec_eval's order (score descending, then doc
    id descending), so the rank column is the rank trec_eval and :mod:`densetune.retrieval.metrics` use."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
            for rank, (did, score) in enumerate(ranked, 1):
                f.write(f"{qid} Q0 {did} {rank} {score:.9g} {tag}\n")
    tmp.replace(path)
