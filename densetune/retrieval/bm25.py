"""BM25 retrieval over texts (bm25s: a sparse score matrix in numpy/scipy), and ``densetune search --bm25``.

One job: lexical top-k in the same shape dense search returns (``scores [Q, k]``, ``indices [Q, k]``, -1 for
an empty slot), so a BM25 run, BM25-mined negatives and fusion reuse everything downstream.

Text processing follows Anserini's BM25 as BEIR ran it: lower-cased word tokens, English stopwords
removed, Porter/Snowball English stemming (PyStemmer), Lucene's BM25 with ``k1=0.9, b=0.4``. A document the
query shares no term with scores 0 and is not returned (as Lucene does), so a query may get fewer than k.

Command: ``densetune search --bm25 --corpus C --queries Q [--split S] --out RUN`` reads texts (a BEIR
directory, or the query and corpus files ``densetune encode`` reads) and writes a TREC run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from densetune.errors import DensetuneError


@dataclass
class BM25Config:
    """BM25 settings; the one source of their defaults (the CLI reads them from here).

    Attributes:
        k1: term-frequency saturation (Anserini's default 0.9).
        b: length normalisation (Anserini's default 0.4).
        stemmer: a PyStemmer language (``english``), or None: no stemming.
        stopwords: a bm25s stopword list name (``en``), or None: keep every word.
    """

    k1: float = 0.9
    b: float = 0.4
    stemmer: str | None = "english"
    stopwords: str | None = "en"

    def __post_init__(self):
        if not self.k1 >= 0:
            raise DensetuneError(f"BM25 k1 must be >= 0, got {self.k1}")
        if not 0 <= self.b <= 1:
            raise DensetuneError(f"BM25 b must be in [0, 1], got {self.b}")


def _bm25s():
    try:
        import bm25s
    except ImportError:  # pragma: no cover - bm25s is a dependency
        raise DensetuneError("BM25 needs bm25s: pip install bm25s PyStemmer") from None
    return bm25s


def _stemmer(name: str | None):
    if name is None:
        return None
    try:
        import Stemmer
    except ImportError:  # pragma: no cover - PyStemmer is a dependency
        raise DensetuneError(
            "BM25 stemming needs PyStemmer: pip install PyStemmer (or stemmer=None)"
        ) from None
    try:
        return Stemmer.Stemmer(name)
    except KeyError:
        raise DensetuneError(f"unknown stemmer language {name!r}") from None


class BM25Index:
    """A BM25 index over ``texts`` (rows are positions in ``texts``).

    Args:
        texts: the documents (title and text joined, as the dense encoders see them).
        config: :class:`BM25Config`.
        show_progress: tqdm bars of bm25s.
    """

    def __init__(
        self, texts: Sequence[str], config: BM25Config | None = None, *, show_progress: bool = False
    ):
        bm25s = _bm25s()
        self.config = config or BM25Config()
        self.size = len(texts)
        if self.size == 0:
            raise DensetuneError("cannot build a BM25 index over an empty corpus")
        self._stem = _stemmer(self.config.stemmer)
        tokens = bm25s.tokenize(
            list(texts), stopwords=self.config.stopwords, stemmer=self._stem, show_progress=show_progress
        )
        self._model = bm25s.BM25(k1=self.config.k1, b=self.config.b, method="lucene")
        self._model.index(tokens, show_progress=show_progress)
        self.show_progress = show_progress

    def tokenize(self, queries: Sequence[str]) -> list[list[str]]:
        """Query texts -> their terms, processed as the documents were (terms not in the corpus are kept;
        they score nothing)."""
        return _bm25s().tokenize(
            list(queries),
            stopwords=self.config.stopwords,
            stemmer=self._stem,
            return_ids=False,
            show_progress=False,
        )

    def search(self, queries: Sequence[str], top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k documents per query: ``(scores [Q, k] float32, indices [Q, k] int64)``, each row by
        descending score then ascending row; slots past the documents that share a term are -1 / -inf."""
        from densetune.retrieval.topk import sort_rows

        if top_k < 1:
            raise DensetuneError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, self.size)
        if len(queries) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        rows, scores = self._model.retrieve(self.tokenize(queries), k=k, show_progress=self.show_progress)
        rows = np.asarray(rows, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        empty = scores <= 0
        rows[empty] = -1
        scores[empty] = -np.inf
        return sort_rows(scores, rows)

    def score(self, query: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """BM25 scores [len(rows)] of one query against the given document rows (float32)."""
        terms = self.tokenize([query])[0]
        all_scores = self._model.get_scores(terms) if terms else np.zeros(self.size, np.float32)
        return np.asarray(all_scores, dtype=np.float32)[np.asarray(rows, dtype=np.int64)]


def bm25_run(
    query_ids: Sequence[str],
    queries: Sequence[str],
    doc_ids: Sequence[str],
    docs: Sequence[str],
    top_k: int = 100,
    config: BM25Config | None = None,
    *,
    show_progress: bool = False,
) -> dict[str, dict[str, float]]:
    """BM25 top-k as a run dict ``{query_id: {doc_id: score}}`` (ids aligned with the texts)."""
    from densetune.retrieval.topk import to_run

    if len(query_ids) != len(queries) or len(doc_ids) != len(docs):
        raise DensetuneError(
            f"ids and texts differ in length: {len(query_ids)} query ids for {len(queries)} queries, "
            f"{len(doc_ids)} doc ids for {len(docs)} documents"
        )
    index = BM25Index(docs, config, show_progress=show_progress)
    scores, indices = index.search(queries, top_k)
    return to_run(query_ids, doc_ids, scores, indices)


# ---------------------------------------------------------------------------------------------------------
# densetune search --bm25 (the search command's parser adds the flags; main hands over here)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The BM25 flags of ``densetune search``."""
    d = BM25Config()
    parser.add_argument(
        "--bm25",
        action="store_true",
        help="BM25 over texts: --queries and --corpus are what encode reads (BEIR dir, jsonl, ...)",
    )
    parser.add_argument("--k1", type=float, default=d.k1, help=f"BM25 k1 (default: {d.k1})")
    parser.add_argument("--b", type=float, default=d.b, help=f"BM25 b (default: {d.b})")


def search_main(args: argparse.Namespace) -> int:
    """``densetune search --bm25``: texts in, TREC run out."""
    from densetune.data.inputs import open_corpus, read_queries
    from densetune.data.trec import write_run

    config = BM25Config(k1=args.k1, b=args.b)
    query_ids, queries = read_queries(args.queries, args.split)
    source = open_corpus(args.corpus, cache_dir=getattr(args, "cache_dir", None))
    start = time.perf_counter()
    docs = source.texts(0, len(source))
    run = bm25_run(query_ids, queries, list(source.ids), docs, args.top_k, config, show_progress=True)
    write_run(run, args.out, tag=args.tag if args.tag != "densetune" else "densetune-bm25")
    print(
        f"BM25 (k1={config.k1}, b={config.b}): {len(query_ids)} queries x {len(docs)} documents in "
        f"{time.perf_counter() - start:.1f}s; wrote top-{args.top_k} to {args.out}"
    )
    return 0
