"""Top-k results as arrays (``scores``, ``rows`` [queries, k]): their one order, and the run they make.

Dense search, faiss and BM25 all return these arrays; ordering them the same way (score descending, then
row ascending) makes every retriever's output deterministic, and :func:`to_run` is the one conversion to a
TREC run dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sort_rows(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each row by score descending, then row index ascending (deterministic output)."""
    order = np.lexsort((indices, -scores), axis=1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


def to_run(
    query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, indices: np.ndarray
) -> dict[str, dict[str, float]]:
    """Turn search results into a run dict ``{query_id: {doc_id: score}}`` (empty slots left out)."""
    run: dict[str, dict[str, float]] = {}
    for qid, row_s, row_i in zip(query_ids, scores.tolist(), indices.tolist()):
        run[qid] = {doc_ids[i]: s for s, i in zip(row_s, row_i) if i >= 0}
    return run
