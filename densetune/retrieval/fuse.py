"""Reciprocal rank fusion of TREC runs (Cormack, Clarke and Buettcher, 2009), and ``densetune fuse``.

A document's fused score is ``sum over runs of weight / (k + rank)``, its rank (1-based) in each run that
lists it, ranks taken in trec_eval's order (score descending, then document id descending: the order
:func:`densetune.data.trec.write_run` writes). Scores of different retrievers (BM25 vs cosine) never
meet, only ranks, which is why fusion needs no calibration. A query in only some runs is fused from those.

Command: ``densetune fuse RUN RUN... --out RUN [--k 60] [--top-k 100] [--weights 1,1]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from densetune.errors import DensetuneError

DEFAULT_K = 60  # the paper's constant


def ranks(docs: Mapping[str, float]) -> dict[str, int]:
    """1-based ranks of a query's documents in trec_eval's order."""
    ranked = sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    return {did: r for r, (did, _) in enumerate(ranked, 1)}


def reciprocal_rank_fusion(
    runs: Sequence[Mapping[str, Mapping[str, float]]],
    *,
    k: float = DEFAULT_K,
    weights: Sequence[float] | None = None,
    top_k: int | None = None,
) -> dict[str, dict[str, float]]:
    """Fuse runs ``{query_id: {doc_id: score}}`` into one, by reciprocal rank.

    Args:
        runs: the runs (at least one).
        k: the rank constant; larger k flattens the difference between top and lower ranks.
        weights: one per run (default all 1).
        top_k: documents kept per query (None: all).

    Returns:
        The fused run; scores are the RRF sums.
    """
    if not runs:
        raise DensetuneError("nothing to fuse: give at least one run")
    if not k >= 0:
        raise DensetuneError(f"RRF k must be >= 0, got {k}")
    weights = [1.0] * len(runs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(runs):
        raise DensetuneError(f"{len(weights)} weights for {len(runs)} runs")
    if top_k is not None and top_k < 1:
        raise DensetuneError(f"top_k must be >= 1, got {top_k}")
    fused: dict[str, dict[str, float]] = {}
    for run, weight in zip(runs, weights):
        for qid, docs in run.items():
            out = fused.setdefault(qid, {})
            for did, rank in ranks(docs).items():
                out[did] = out.get(did, 0.0) + weight / (k + rank)
    if top_k is not None:
        fused = {
            qid: dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:top_k])
            for qid, docs in fused.items()
        }
    return fused


# ---------------------------------------------------------------------------------------------------------
# densetune fuse


def _weights(text: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="TREC run files to fuse")
    parser.add_argument("--out", required=True, help="fused TREC run file to write")
    parser.add_argument(
        "--k", type=float, default=DEFAULT_K, help=f"RRF rank constant (default: {DEFAULT_K})"
    )
    parser.add_argument("--top-k", type=int, default=100, help="documents per query (default: 100)")
    parser.add_argument("--weights", type=_weights, default=None, help="one weight per run, e.g. 1,0.5")
    parser.add_argument("--tag", default="densetune-rrf", help="run tag (last column of the run file)")


def main(args: argparse.Namespace) -> int:
    from densetune.data.trec import read_run, write_run

    runs = [read_run(path) for path in args.runs]
    fused = reciprocal_rank_fusion(runs, k=args.k, weights=args.weights, top_k=args.top_k)
    write_run(fused, args.out, tag=args.tag)
    print(f"fused {len(runs)} runs ({len(fused)} queries, RRF k={args.k:g}) -> {args.out}")
    return 0
