"""Positive-aware hard-negative selection: retrieved candidates in, negative ids and statistics out.

Selection, for each query (all rules vectorised over blocks of queries, :func:`select_negatives`):

1. Candidates: the query's top ``range_max + max positives + 8`` documents by exact chunked search
   (:func:`densetune.retrieval.search.search`), so the corpus may be a memory-mapped float16 ``doc.npy``
   far larger than RAM and no ``[queries, corpus]`` score matrix is ever held; or by any other retriever
   (:func:`mine_with_retriever`: BM25 in :mod:`densetune.retrieval.bm25`), the rules below unchanged.
2. Never a negative: every positive (by id, or by text when texts are given), a document whose text equals
   the query's text, and a repeat of an earlier candidate (same id or same text; the best-ranked copy is
   kept).
3. Rank window: of the remaining candidates, ranks ``range_min <= rank < range_max`` (0-based) are kept.
   (sentence-transformers applies its window after the score filters; here rank means retrieval rank.)
4. Score filters, against the query's lowest positive score ``p`` (the hardest positive, as
   sentence-transformers and NeMo do): ``absolute_margin`` drops candidates scoring above ``p - margin``;
   ``relative_margin`` drops those above ``p - |p| * margin`` (NV-Retriever TopK-PercPos: 0.05 keeps
   negatives below 95% of a positive score); ``max_score`` / ``min_score`` drop those above / below.
5. Sampling: ``top`` takes the best ``num_negatives`` survivors; ``random`` draws them uniformly from all
   survivors with a generator seeded by ``(seed, query index)`` (reproducible, independent of batching),
   and returns them in rank order. Queries with fewer survivors get fewer negatives (counted).
6. Fill (``fill="random"``, off by default): a query left short (typically one whose positive the model
   ranks low, so every nearby candidate is within the margin) is topped up with documents drawn uniformly
   from the corpus that pass every rule but the rank window and are not among its top ``range_max``
   candidates (seeded by ``(seed, query index)``), appended after the mined ones. Easy negatives, but the
   query stays in training instead of being dropped; counted as ``filled``.

Defaults (:class:`MiningConfig`) follow NV-Retriever / NeMo Automodel's recipe: 15 negatives from the top
100, relative margin 0.05, sampling top.

"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from densetune.errors import DensetuneError
from densetune.retrieval.search import SearchConfig, search

SAMPLING = ("top", "random")
FILL = ("none", "random")
_FILL_TRIES = 8  # random draws per missing negative before a query is left short
SKIP_REASONS = (
    "positive",
    "query_text",
    "duplicate",
    "rank_window",
    "absolute_margin",
    "relative_margin",
    "max_score",
    "min_score",
)
# extra candidates retrieved beyond range_max + positives, room for query-text copies and duplicates
_DEPTH_SLACK = 8
_BLOCK = 4096  # queries selected together


@dataclass
class MiningConfig:
    """Selection rules; the one source of mining defaults (the CLI reads them from here).

    Attributes:
        num_negatives: negatives per query.
        range_min / range_max: rank window over the non-positive, de-duplicated candidates.
        absolute_margin: drop candidates scoring above ``positive - absolute_margin`` (None: off).
        relative_margin: drop candidates scoring above ``positive - |positive| * relative_margin``
            (None: off; 0.05 = NV-Retriever TopK-PercPos).
        max_score / min_score: drop candidates scoring above / below (None: off).
        sampling: ``top`` (hardest first) or ``random`` (uniform among the survivors, seeded).
        seed: seed for ``random`` sampling and ``fill``.
        fill: ``none`` (a query keeps however many negatives survived) or ``random`` (top up short queries
            with random corpus documents outside the candidates, see the module docstring).
    """

    num_negatives: int = 15
    range_min: int = 0
    range_max: int = 100
    absolute_margin: float | None = None
    relative_margin: float | None = 0.05
    max_score: float | None = None
    min_score: float | None = None
    sampling: str = "top"
    seed: int = 42
    fill: str = "none"

    def __post_init__(self):
        if self.num_negatives < 1:
            raise DensetuneError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if self.range_min < 0 or self.range_max <= self.range_min:
            raise DensetuneError(
                f"need 0 <= range_min < range_max, got range_min={self.range_min}, range_max={self.range_max}"
            )
        if self.num_negatives > self.range_max - self.range_min:
            raise DensetuneError(
                f"cannot mine {self.num_negatives} negatives from a window of {self.range_max - self.range_min} "
                f"ranks (range_min={self.range_min}, range_max={self.range_max}); raise range_max or lower "
                "num_negatives"
            )
        for name in ("absolute_margin", "relative_margin"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise DensetuneError(f"{name} must be a non-negative number or None, got {value}")
        if self.max_score is not None and self.min_score is not None and self.min_score > self.max_score:
            raise DensetuneError(
                f"min_score {self.min_score} is above max_score {self.max_score}: nothing could pass"
            )
        if self.fill not in FILL:
            raise DensetuneError(f"unknown fill {self.fill!r}; expected one of {', '.join(FILL)}")
        if self.sampling not in SAMPLING:
            raise DensetuneError(f"unknown sampling {self.sampling!r}; expected one of {', '.join(SAMPLING)}")

    @property
    def uses_positive_scores(self) -> bool:
        return self.absolute_margin is not None or self.relative_margin is not None


@dataclass
class MiningStats:
    """What mining did: counts, skipped candidates by reason, and score samples.

    Attributes:
        queries: queries mined.
        requested: negatives asked for per query.
        negatives: negatives chosen in total.
        short_queries: queries that got fewer than ``requested``.
        empty_queries: queries that got none.
        filled_queries / filled: queries topped up by ``fill="random"``, and the documents added (the
            other counts are taken after filling).
        skipped: candidates skipped, by reason (:data:`SKIP_REASONS`), each counted under its first reason.
        positive_scores / negative_scores: scores of the positives and of the chosen negatives.
    """

    queries: int = 0
    requested: int = 0
    negatives: int = 0
    short_queries: int = 0
    empty_queries: int = 0
    filled_queries: int = 0
    filled: int = 0
    skipped: Counter = field(default_factory=Counter)
    positive_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    negative_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able summary (score quantiles, not the samples)."""
        return {
            "queries": self.queries,
            "requested_per_query": self.requested,
            "negatives": self.negatives,
            "short_queries": self.short_queries,
            "empty_queries": self.empty_queries,
            "filled_queries": self.filled_queries,
            "filled": self.filled,
            "skipped": {r: int(self.skipped.get(r, 0)) for r in SKIP_REASONS},
            "positive_scores": _quantiles(self.positive_scores),
            "negative_scores": _quantiles(self.negative_scores),
        }

    def summary(self) -> str:
        """A few lines for people: counts, skip reasons, score quantiles of positives and negatives."""
        avg = self.negatives / self.queries if self.queries else 0.0
        lines = [
            f"mined {self.queries} queries: {self.requested} negatives requested, {avg:.2f} on average; "
            f"{self.short_queries} queries got fewer ({self.empty_queries} got none)"
            + (
                f"; {self.filled_queries} short queries topped up with {self.filled} random corpus negatives"
                if self.filled_queries
                else ""
            ),
            "skipped candidates: "
            + ", ".join(f"{r.replace('_', ' ')} {self.skipped.get(r, 0)}" for r in SKIP_REASONS),
            f"{'scores':<10} {'n':>8} "
            + " ".join(f"{h:>7}" for h in ("min", "p05", "p25", "p50", "p75", "p95", "max", "mean")),
        ]
        for name, values in (("positives", self.positive_scores), ("negatives", self.negative_scores)):
            q = _quantiles(values)
            cells = " ".join(
                f"{q[h]:>7.4f}" if q["n"] else f"{'-':>7}"
                for h in ("min", "p05", "p25", "p50", "p75", "p95", "max", "mean")
            )
            lines.append(f"{name:<10} {q['n']:>8} {cells}")
        return "\n".join(lines)


def _quantiles(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"n": 0}
    p = np.quantile(values, [0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    names = ("min", "p05", "p25", "p50", "p75", "p95", "max")
    out: dict[str, float] = {"n": int(values.size), **{k: float(v) for k, v in zip(names, p)}}
    out["mean"] = float(values.mean())
    return out


@dataclass
class MinedNegatives:
    """Result of :func:`mine_hard_negatives`, per query (lists aligned with the queries).

    Attributes:
        indices: int64 rows of ``doc_emb`` chosen as negatives, in rank order.
        scores: their float32 scores.
        positive_scores: float32 scores of the query's positives (aligned with ``positive_ids``; NaN where
            a positive was not in the corpus and no score was given).
        stats: a :class:`MiningStats`.
    """

    indices: list[np.ndarray]
    scores: list[np.ndarray]
    positive_scores: list[np.ndarray]
    stats: MiningStats

    @classmethod
    def concat(cls, parts: Sequence[MinedNegatives]) -> MinedNegatives:
        """The results of consecutive query slices (e.g. one per process) as one result, in slice order."""
        stats = MiningStats(requested=parts[0].stats.requested if parts else 0)
        for part in parts:
            for name in (
                "queries",
                "negatives",
                "short_queries",
                "empty_queries",
                "filled_queries",
                "filled",
            ):
                setattr(stats, name, getattr(stats, name) + getattr(part.stats, name))
            stats.skipped.update(part.stats.skipped)
        stats.positive_scores = np.concatenate(
            [stats.positive_scores, *(p.stats.positive_scores for p in parts)]
        )
        stats.negative_scores = np.concatenate(
            [stats.negative_scores, *(p.stats.negative_scores for p in parts)]
        )
        return cls(
            [r for p in parts for r in p.indices],
            [x for p in parts for x in p.scores],
            [x for p in parts for x in p.positive_scores],
            stats,
        )


def _pad(rows: Sequence[Sequence[int]], fill: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged int lists -> ([n, max_len] int64 padded with ``fill``, [n, max_len] bool valid mask)."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), max(width, 1)), fill, dtype=np.int64)
    mask = np.zeros(out.shape, dtype=bool)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = r
            mask[i, : len(r)] = True
    return out, mask


def select_negatives(
    cand_scores: np.ndarray,
    cand_rows: np.ndarray,
    config: MiningConfig,
    *,
    positive_rows: Sequence[Sequence[int]],
    positive_floor: np.ndarray,
    doc_canon: np.ndarray | None = None,
    doc_keys: np.ndarray | None = None,
    query_keys: np.ndarray | None = None,
    positive_keys: Sequence[Sequence[int]] | None = None,
    query_offset: int = 0,
    stats: MiningStats | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Apply the selection rules (module docstring) to retrieved candidates of a block of queries.

    Args:
        cand_scores: [B, D] candidate scores, each row descending.
        cand_rows: [B, D] candidate document rows (-1: empty slot).
        config: the rules.
        positive_rows: per query, canonical document rows of its positives (rows not in the corpus left
            out).
        positive_floor: [B] the score margins are measured against (lowest positive score; NaN: unknown).
        doc_canon: [N] canonical row of each document (the first row with its id), so that repeated ids
            count as the same document; None: ids are unique.
        doc_keys: [N] or [N, K] int64 text keys of the documents (equal text, equal key), or None: no text
            rules. With K columns (e.g. title + text, and text alone), a document matches a query or a
            positive when any column does; duplicates are judged on column 0.
        query_keys: [B] text key of each query, or None.
        positive_keys: per query, text keys of its positives, or None.
        query_offset: index of the block's first query (seeds ``random`` sampling).
        stats: counts are added here.

    Returns:
        ``(rows, scores)``: per query, chosen document rows and scores in rank order.
    """
    stats = stats if stats is not None else MiningStats()
    b, depth = cand_rows.shape
    filled = cand_rows >= 0
    reason = np.zeros((b, depth), dtype=np.int8)  # 0: kept, else 1 + index in SKIP_REASONS

    def mark(mask: np.ndarray, name: str) -> None:
        hit = mask & filled & (reason == 0)
        reason[hit] = SKIP_REASONS.index(name) + 1

    ids = cand_rows if doc_canon is None else np.where(filled, doc_canon[np.maximum(cand_rows, 0)], -1)
    pos, pos_ok = _pad(positive_rows, -2)
    mark((ids[:, :, None] == pos[:, None, :]).any(-1, where=pos_ok[:, None, :]), "positive")
    if doc_keys is not None:
        doc_keys = np.asarray(doc_keys, dtype=np.int64)
        doc_keys = doc_keys[:, None] if doc_keys.ndim == 1 else doc_keys
        keys = doc_keys[np.maximum(cand_rows, 0)]  # [B, D, K]
        if positive_keys is not None:
            pk, pk_ok = _pad(positive_keys, 0)  # [B, P]
            same = keys[:, :, :, None] == pk[:, None, None, :]  # [B, D, K, P]
            mark(same.any(-1, where=pk_ok[:, None, None, :]).any(-1), "positive")
        if query_keys is not None:
            mark((keys == np.asarray(query_keys, dtype=np.int64)[:, None, None]).any(-1), "query_text")
        mark(_repeats(keys[:, :, 0]), "duplicate")
    mark(_repeats(ids), "duplicate")

    # rank among the candidates that may be negatives at all
    eligible = filled & (reason == 0)
    rank = np.cumsum(eligible, axis=1) - 1
    mark((rank < config.range_min) | (rank >= config.range_max), "rank_window")
    for mask, name in _score_rules(
        cand_scores, np.asarray(positive_floor, dtype=np.float64)[:, None], config
    ):
        mark(mask, name)

    survivors = filled & (reason == 0)
    counts = np.bincount(reason[filled].ravel(), minlength=len(SKIP_REASONS) + 1)
    for i, name in enumerate(SKIP_REASONS):
        stats.skipped[name] += int(counts[i + 1])
    out_rows: list[np.ndarray] = []
    out_scores: list[np.ndarray] = []
    for i in range(b):
        cols = np.flatnonzero(survivors[i])
        if config.sampling == "random" and cols.size > config.num_negatives:
            rng = np.random.default_rng([config.seed, query_offset + i])
            cols = np.sort(rng.choice(cols, size=config.num_negatives, replace=False))
        else:
            cols = cols[: config.num_negatives]
        out_rows.append(cand_rows[i, cols].astype(np.int64))
        out_scores.append(cand_scores[i, cols].astype(np.float32))
    return out_rows, out_scores


def _score_rules(scores: np.ndarray, floor: np.ndarray, config: MiningConfig) -> list[tuple[np.ndarray, str]]:
    """Step 4's score filters as ``(mask of documents it drops, reason)``, in order; ``floor`` broadcasts
    against ``scores`` (the query's lowest positive score; NaN disables the margins)."""
    rules = []
    if config.absolute_margin is not None:
        rules.append((scores > floor - config.absolute_margin, "absolute_margin"))
    if config.relative_margin is not None:
        rules.append((scores > floor - np.abs(floor) * config.relative_margin, "relative_margin"))
    if config.max_score is not None:
        rules.append((scores > config.max_score, "max_score"))
    if config.min_score is not None:
        rules.append((scores < config.min_score, "min_score"))
    return rules


def _repeats(values: np.ndarray) -> np.ndarray:
    """[B, D] mask: True where the value already appeared earlier in its row."""
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, 1)
    again = np.zeros(values.shape, dtype=bool)
    again[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    out = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(out, order, again, 1)
    return out


def mine_hard_negatives(
    query_emb: np.ndarray | torch.Tensor,
    positive_ids: Sequence[Sequence[str]],
    doc_emb: np.ndarray | torch.Tensor,
    doc_ids: Sequence[str],
    config: MiningConfig | None = None,
    *,
    positive_scores: Sequence[Sequence[float]] | None = None,
    doc_keys: np.ndarray | None = None,
    query_keys: np.ndarray | Sequence[int] | None = None,
    positive_keys: Sequence[Sequence[int]] | None = None,
    search_config: SearchConfig | None = None,
    show_progress: bool = False,
    query_offset: int = 0,
) -> MinedNegatives:
    """Mine hard negatives for every query from embeddings (no file IO; see :func:`mine` for files).

    Args:
        query_emb: [Q, H] query embeddings.
        positive_ids: per query, ids of its positives (ids absent from ``doc_ids`` are allowed: they can
            only be excluded by text then, and need ``positive_scores`` when a margin is used).
        doc_emb: [N, H] document embeddings; a read-only memmap (float16 or float32) is fine.
        doc_ids: [N] document ids aligned with ``doc_emb``.
        config: selection rules (default :class:`MiningConfig`).
        positive_scores: per query, scores of its positives; default: inner products with ``doc_emb``
            rows of the positives (cosine when ``search_config.normalize``).
        doc_keys: [N] (or [N, K], see :func:`select_negatives`) int64 text keys (e.g. ``hash(text)``):
            enables the text rules (positives, query
            text, duplicates by text).
        query_keys: [Q] text keys of the queries.
        positive_keys: per query, text keys of its positives.
        search_config: how candidates are retrieved (default exact chunked search).
        show_progress: tqdm bars.
        query_offset: global index of the first query when these queries are one process's slice of a
            larger set: random sampling and filling are seeded by the global index, so the slices of
            several processes give what one process gives for the whole set.

    Returns:
        :class:`MinedNegatives`.

    Raises:
        DensetuneError: misaligned inputs, or a margin with a query whose positive scores are unknown.

    Example:
        >>> mined = mine_hard_negatives(q, [["d3"], ["d7", "d9"]], docs, ids, MiningConfig(num_negatives=4))
        >>> [ids[r] for r in mined.indices[0]]
    """
    config = config or MiningConfig()
    search_config = search_config or SearchConfig()
    n_queries, n_docs = query_emb.shape[0], doc_emb.shape[0]
    if len(doc_ids) != n_docs:
        raise DensetuneError(f"{len(doc_ids)} doc ids for {n_docs} document embeddings")
    normalize = search_config.normalize
    return mine_with_retriever(
        lambda depth: search(query_emb, doc_emb, depth, search_config, show_progress=show_progress),
        lambda i, rows: _similarity(query_emb[i], doc_emb[rows], normalize),
        n_queries,
        positive_ids,
        doc_ids,
        config,
        positive_scores=positive_scores,
        doc_keys=doc_keys,
        query_keys=query_keys,
        positive_keys=positive_keys,
        query_offset=query_offset,
    )


def mine_with_retriever(
    retrieve: Callable[[int], tuple[np.ndarray, np.ndarray]],
    score: Callable[[int, np.ndarray], np.ndarray],
    n_queries: int,
    positive_ids: Sequence[Sequence[str]],
    doc_ids: Sequence[str],
    config: MiningConfig | None = None,
    *,
    positive_scores: Sequence[Sequence[float]] | None = None,
    doc_keys: np.ndarray | None = None,
    query_keys: np.ndarray | Sequence[int] | None = None,
    positive_keys: Sequence[Sequence[int]] | None = None,
    query_offset: int = 0,
) -> MinedNegatives:
    """The selection rules over any retriever: what :func:`mine_hard_negatives` does with dense search,
    and ``densetune mine --retriever bm25`` with BM25.

    Args:
        retrieve: ``depth -> (scores [Q, depth], rows [Q, depth])``, rows by descending score, -1 for an
            empty slot (as :func:`densetune.retrieval.search.search` returns).
        score: ``(query index, document rows) -> scores``, the retriever's score of given documents (for
            positives and ``fill``), on the scale ``retrieve`` returns.
        n_queries: number of queries.
        positive_ids, doc_ids, config, positive_scores, doc_keys, query_keys, positive_keys, query_offset: as
            in :func:`mine_hard_negatives`.
    """
    config = config or MiningConfig()
    n_docs = len(doc_ids)
    if len(positive_ids) != n_queries:
        raise DensetuneError(f"{len(positive_ids)} positive lists for {n_queries} queries")
    if doc_keys is not None and len(doc_keys) != n_docs:
        raise DensetuneError(f"{len(doc_keys)} doc keys for {n_docs} documents")
    if positive_scores is not None and len(positive_scores) != n_queries:
        raise DensetuneError(f"{len(positive_scores)} positive score lists for {n_queries} queries")
    row_of: dict[str, int] = {}
    for i, d in enumerate(doc_ids):
        row_of.setdefault(d, i)
    # a repeated id is the same document: compare ids by their first row
    doc_canon = np.fromiter((row_of[d] for d in doc_ids), dtype=np.int64, count=n_docs)
    positive_rows = [[row_of.get(str(p), -1) for p in ps] for ps in positive_ids]

    pos_scores = _positive_scores(score, positive_rows, positive_scores)
    floor = np.array([np.nanmin(s) if np.isfinite(s).any() else np.nan for s in pos_scores], dtype=np.float64)
    if config.uses_positive_scores and np.isnan(floor).any():
        bad = int(np.flatnonzero(np.isnan(floor))[0])
        raise DensetuneError(
            f"query {bad} has no positive in the corpus and no positive_scores were given, but a margin needs "
            "the positive's score; pass positive_scores or disable the margins"
        )
    max_pos = max((len(p) for p in positive_ids), default=0)
    depth = min(n_docs, config.range_max + max_pos + _DEPTH_SLACK)
    cand_scores, cand_rows = retrieve(depth)

    stats = MiningStats(queries=n_queries, requested=config.num_negatives)
    rows: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    qkeys = None if query_keys is None else np.asarray(query_keys, dtype=np.int64)
    for start in range(0, n_queries, _BLOCK):
        stop = min(start + _BLOCK, n_queries)
        r, s = select_negatives(
            cand_scores[start:stop],
            cand_rows[start:stop],
            config,
            positive_rows=[[x for x in p if x >= 0] for p in positive_rows[start:stop]],
            positive_floor=floor[start:stop],
            doc_canon=doc_canon,
            doc_keys=doc_keys,
            query_keys=None if qkeys is None else qkeys[start:stop],
            positive_keys=None if positive_keys is None else positive_keys[start:stop],
            query_offset=query_offset + start,
            stats=stats,
        )
        rows.extend(r)
        scores.extend(s)
    if config.fill == "random":
        _fill_random(rows, scores, config, score, n_docs, doc_canon, cand_rows, positive_rows, floor,
                     doc_keys, qkeys, positive_keys, stats, query_offset)  # fmt: skip
    got = np.array([len(r) for r in rows], dtype=np.int64)
    stats.negatives = int(got.sum())
    stats.short_queries = int((got < config.num_negatives).sum())
    stats.empty_queries = int((got == 0).sum())
    stats.positive_scores = np.concatenate(pos_scores) if pos_scores else np.zeros(0, np.float32)
    stats.negative_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    return MinedNegatives(rows, scores, pos_scores, stats)


def _fill_random(
    rows, scores, config, score, n_docs, doc_canon, cand_rows, positive_rows, floor,
    doc_keys, query_keys, positive_keys, stats, query_offset=0,
) -> None:  # fmt: skip
    """Top up short queries in place with random corpus rows (module docstring, step 6), scored by the model.

    A drawn document must pass what a mined one passes except the rank window: not a positive, the query's
    text, a repeat or an earlier-ranked candidate (ranks below ``range_max``), and the score filters.
    """
    keys = None
    if doc_keys is not None:
        keys = np.asarray(doc_keys, dtype=np.int64)
        keys = keys[:, None] if keys.ndim == 1 else keys
    for i, chosen in enumerate(rows):
        missing = config.num_negatives - len(chosen)
        if missing <= 0:
            continue
        banned = {int(doc_canon[r]) for r in chosen}
        banned |= {int(doc_canon[r]) for r in cand_rows[i][: config.range_max] if r >= 0}
        banned |= {int(doc_canon[r]) for r in positive_rows[i] if r >= 0}
        bad_keys: set[int] = set()
        if keys is not None:
            bad_keys |= {int(k) for k in (positive_keys[i] if positive_keys is not None else [])}
            if query_keys is not None:
                bad_keys.add(int(query_keys[i]))
            bad_keys |= {int(keys[r, 0]) for r in chosen}
        rng = np.random.default_rng([config.seed, query_offset + i, 1])
        added: list[int] = []
        added_scores: list[float] = []
        for r in rng.integers(0, n_docs, size=missing * _FILL_TRIES):
            canon = int(doc_canon[r])
            if canon in banned or (keys is not None and bad_keys.intersection(keys[canon].tolist())):
                continue
            banned.add(canon)
            value = float(score(i, np.array([canon]))[0])
            if any(bool(mask) for mask, _ in _score_rules(np.float64(value), np.float64(floor[i]), config)):
                continue
            if keys is not None:
                bad_keys.add(int(keys[canon, 0]))
            added.append(canon)
            added_scores.append(value)
            if len(added) == missing:
                break
        if added:
            rows[i] = np.concatenate([chosen, np.array(added, dtype=np.int64)])
            scores[i] = np.concatenate([scores[i], np.array(added_scores, dtype=np.float32)])
            stats.filled_queries += 1
            stats.filled += len(added)


def _positive_scores(score, positive_rows, given) -> list[np.ndarray]:
    if given is not None:
        return [np.asarray(s, dtype=np.float32).reshape(-1) for s in given]
    out = []
    for i, rows in enumerate(positive_rows):
        s = np.full(len(rows), np.nan, dtype=np.float32)
        found = [j for j, r in enumerate(rows) if r >= 0]
        if found:
            s[found] = score(i, np.array([rows[j] for j in found]))
        out.append(s)
    return out


def _similarity(query, docs, normalize: bool) -> np.ndarray:
    """Scores [n] of one query [H] against documents [n, H], as the search scores them (cosine when
    ``normalize``, else inner product), in float32."""
    q = _f32(query).reshape(-1)
    d = _f32(docs)
    if normalize:
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return (d @ q).astype(np.float32)


def _f32(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def text_key(text: str) -> int:
    """Key under which two texts count as equal (whitespace at the ends ignored); compared in-process only."""
    return hash(text.strip())


# ---------------------------------------------------------------------------------------------------------
