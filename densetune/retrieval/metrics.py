"""Ranking metrics over qrels and run dicts, equal to trec_eval (pytrec_eval) to 1e-6.

Metrics know nothing about models or datasets: they take ``qrels = {query_id: {doc_id: relevance}}`` and
``run = {query_id: {doc_id: score}}`` and return numbers.

Conventions (all those of trec_eval 9 / pytrec_eval, checked against pytrec-eval-terrier in the tests):

- Ranking: documents sorted by score descending, ties broken by document id descending (byte order),
  as trec_eval does. The rank a run file states is ignored.
- A document is relevant when its relevance is ``>= relevance_level`` (default 1); relevance ``<= 0`` is
  never relevant. Unjudged documents count as non-relevant.
- ``ndcg@k`` is trec_eval's ``ndcg_cut.k``: gain = relevance level (graded, only levels > 0 give gain),
  discount ``log2(rank + 1)``, ideal ranking from every judged document of the query, both cut at k.
- ``mrr@k``: trec_eval's ``recip_rank`` on the ranking cut at k (``mrr`` without k: the whole ranking).
- ``recall@k`` (``recall.k``), ``map@k`` (``map_cut.k``; ``map``: uncut), ``p@k`` (``P.k``: divides by k
  even when fewer than k documents were retrieved), ``accuracy@k`` (``success.k``: 1 if any relevant
  document is in the top k). Queries with no relevant documents score 0 on every metric.
- Which queries are averaged (``missing_queries``):

  * ``"skip"`` (default; pytrec_eval, and BEIR's ``EvaluateRetrieval.evaluate``, which averages over
    ``len(scores)``): a query counts when it is in both the qrels and the run. Queries only in the run
    are ignored; queries only in the qrels are left out of the average.
  * ``"zero"`` (trec_eval ``-c``): every query in the qrels counts; one the run lacks scores 0.

- ``ignore_identical_ids=True`` drops documents whose id equals the query id before ranking: BEIR's
  default (it matters on ArguAna and Quora, where queries are also corpus documents).

Example:
    >>> qrels = {"q1": {"d1": 1, "d2": 0}}
    >>> run = {"q1": {"d1": 0.2, "d2": 0.9, "d3": 0.1}}
    >>> evaluate(qrels, run, metrics=("mrr@10", "p@2"))
    {'mrr@10': 0.5, 'p@2': 0.5}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from densetune.errors import DensetuneError

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "map@100", "p@10", "accuracy@10")

# canonical metric name -> the trec_eval measure it equals (cut at k)
_METRICS = {
    "ndcg": "ndcg_cut",
    "mrr": "recip_rank",
    "recall": "recall",
    "map": "map_cut",
    "p": "P",
    "accuracy": "success",
}
_ALIASES = {
    "ndcg_cut": "ndcg",
    "recip_rank": "mrr",
    "rr": "mrr",
    "r": "recall",
    "map_cut": "map",
    "precision": "p",
    "success": "accuracy",
    "acc": "accuracy",
}
# metrics that have a meaning without a cut-off (the whole ranking)
_UNCUT_OK = {"mrr", "map", "ndcg"}
MISSING_QUERY_MODES = ("skip", "zero")


@dataclass(frozen=True)
class Metric:
    """A parsed metric: ``name`` in ndcg | mrr | recall | map | p | accuracy, ``k`` the cut-off or None."""

    name: str
    k: int | None = None

    @property
    def label(self) -> str:
        """The canonical spelling, e.g. ``"ndcg@10"``; used as the key of every result dict."""
        return self.name if self.k is None else f"{self.name}@{self.k}"


def parse_metric(spec: str) -> Metric:
    """Parse ``"ndcg@10"``, ``"MRR@10"``, ``"P@5"``, ``"map"``, ``"recall@100"``, ``"success@1"``...

    Args:
        spec: metric name, optionally ``@k``. Aliases: precision=p, success/acc=accuracy, rr/recip_rank=mrr,
            map_cut=map, ndcg_cut=ndcg, r=recall.

    Raises:
        DensetuneError: unknown name, bad or missing cut-off; the message lists the valid names.
    """
    text = spec.strip().lower()
    name, _, k_text = text.partition("@")
    name = _ALIASES.get(name, name)
    valid = "ndcg, mrr, recall, map, p, accuracy (e.g. ndcg@10)"
    if name not in _METRICS:
        raise DensetuneError(f"unknown metric {spec!r}: expected one of {valid}")
    if not k_text:
        if name not in _UNCUT_OK:
            raise DensetuneError(f"metric {spec!r} needs a cut-off, e.g. {name}@10")
        return Metric(name, None)
    try:
        k = int(k_text)
    except ValueError:
        raise DensetuneError(f"metric {spec!r}: cut-off must be a positive integer") from None
    if k <= 0:
        raise DensetuneError(f"metric {spec!r}: cut-off must be a positive integer")
    return Metric(name, k)


def parse_metrics(specs: Iterable[str | Metric]) -> list[Metric]:
    """Parse several metric names (duplicates removed, order kept)."""
    out: list[Metric] = []
    for spec in specs:
        metric = spec if isinstance(spec, Metric) else parse_metric(spec)
        if metric not in out:
            out.append(metric)
    return out


def rank_documents(scores: Mapping[str, float]) -> list[str]:
    """Document ids in trec_eval order: score descending, then document id descending."""
    # Python compares str by code point, which for UTF-8 is the byte order strcmp uses.
    return [doc for doc, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def query_metrics(
    rels: Mapping[str, int],
    ranking: Sequence[str],
    metrics: Sequence[Metric],
    relevance_level: int = 1,
) -> dict[str, float]:
    """Every metric for one query.

    Args:
        rels: ``{doc_id: relevance}`` for the query (may be empty).
        ranking: retrieved document ids, best first (see :func:`rank_documents`).
        metrics: parsed metrics.
        relevance_level: smallest relevance that counts as relevant for the binary metrics.

    Returns:
        ``{metric.label: value}``.
    """
    num_rel = sum(1 for r in rels.values() if r >= relevance_level)
    # relevance of each retrieved doc, in rank order; unjudged -> 0
    ranked_rel = [rels.get(doc, 0) for doc in ranking]
    is_rel = [r >= relevance_level for r in ranked_rel]
    out: dict[str, float] = {}
    for metric in metrics:
        k = len(ranking) if metric.k is None else metric.k
        top = is_rel[:k]
        if metric.name == "ndcg":
            out[metric.label] = _ndcg(rels, ranked_rel, metric.k)
        elif num_rel == 0:
            out[metric.label] = 0.0
        elif metric.name == "mrr":
            out[metric.label] = next((1.0 / (i + 1) for i, r in enumerate(top) if r), 0.0)
        elif metric.name == "recall":
            out[metric.label] = sum(top) / num_rel
        elif metric.name == "map":
            hits, total = 0, 0.0
            for i, r in enumerate(top):
                if r:
                    hits += 1
                    total += hits / (i + 1)
            out[metric.label] = total / num_rel
        elif metric.name == "p":
            out[metric.label] = sum(top) / k
        elif metric.name == "accuracy":
            out[metric.label] = 1.0 if any(top) else 0.0
        else:  # pragma: no cover - parse_metric guards this
            raise AssertionError(metric)
    return out


def _dcg(gains: Iterable[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains) if g > 0)


def _ndcg(rels: Mapping[str, int], ranked_rel: Sequence[int], k: int | None) -> float:
    # k None: trec_eval's uncut "ndcg" (ideal over every judged document, whole ranking)
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = _dcg(ideal)
    if idcg == 0:
        return 0.0
    return _dcg(ranked_rel[:k]) / idcg


def evaluate_per_query(
    qrels: Qrels,
    run: Run,
    metrics: Iterable[str | Metric] = DEFAULT_METRICS,
    *,
    missing_queries: str = "skip",
    ignore_identical_ids: bool = False,
    relevance_level: int = 1,
) -> dict[str, dict[str, float]]:
    """Metric values for every evaluated query.

    Args:
        qrels: ``{query_id: {doc_id: relevance}}``.
        run: ``{query_id: {doc_id: score}}``.
        metrics: metric names such as ``"ndcg@10"`` (see :func:`parse_metric`).
        missing_queries: ``"skip"`` (pytrec_eval) or ``"zero"`` (trec_eval -c); see the module docstring.
        ignore_identical_ids: drop documents whose id equals the query id (BEIR's default).
        relevance_level: smallest relevance counted as relevant by the binary metrics (trec_eval ``-l``).

    Returns:
        ``{query_id: {metric label: value}}`` in qrels order.
    """
    if missing_queries not in MISSING_QUERY_MODES:
        raise DensetuneError(f"missing_queries must be one of {MISSING_QUERY_MODES}, got {missing_queries!r}")
    parsed = parse_metrics(metrics)
    per_query: dict[str, dict[str, float]] = {}
    for qid, rels in qrels.items():
        scores = run.get(qid)
        if scores is None:
            if missing_queries == "skip":
                continue
            scores = {}
        if ignore_identical_ids and qid in scores:
            scores = {doc: s for doc, s in scores.items() if doc != qid}
        per_query[qid] = query_metrics(rels, rank_documents(scores), parsed, relevance_level)
    return per_query


def mean_metrics(
    per_query: Mapping[str, Mapping[str, float]], metrics: Iterable[str | Metric]
) -> dict[str, float]:
    """Average per-query values; 0.0 for every metric when no query was evaluated."""
    labels = [m.label for m in parse_metrics(metrics)]
    n = len(per_query)
    return {label: (sum(v[label] for v in per_query.values()) / n if n else 0.0) for label in labels}


def evaluate(
    qrels: Qrels,
    run: Run,
    metrics: Iterable[str | Metric] = DEFAULT_METRICS,
    *,
    missing_queries: str = "skip",
    ignore_identical_ids: bool = False,
    relevance_level: int = 1,
) -> dict[str, float]:
    """Mean of every metric over the evaluated queries (see :func:`evaluate_per_query` for the arguments).

    Returns:
        ``{metric label: mean value}``, e.g. ``{"ndcg@10": 0.6451, "mrr@10": 0.61, ...}``.
    """
    metrics = parse_metrics(metrics)
    per_query = evaluate_per_query(
        qrels,
        run,
        metrics,
        missing_queries=missing_queries,
        ignore_identical_ids=ignore_identical_ids,
        relevance_level=relevance_level,
    )
    return mean_metrics(per_query, metrics)


def metrics_with_cutoffs(names: Iterable[str], cutoffs: Iterable[int]) -> list[str]:
    """Expand bare names over cut-offs: ``(["ndcg", "recall@5"], [1, 10])`` -> ndcg@1, ndcg@10, recall@5.

    A name that already has ``@k`` is kept as it is.
    """
    cutoffs = list(cutoffs)
    out: list[str] = []
    for name in names:
        if "@" in name or not cutoffs:
            out.append(name)
        else:
            out.extend(f"{name}@{k}" for k in cutoffs)
    return out
