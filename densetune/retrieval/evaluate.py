"""Evaluate retrieval: a run against qrels, or a model on a BEIR split (encode + search + evaluate).

Python: :func:`evaluate_model` (used by the quickstart and by evaluation during training) and
:func:`evaluate_run`. Command:

- ``densetune evaluate --run RUN --qrels QRELS [--metrics ndcg,mrr] [--k 1,3,5,10,100] [--out metrics.json]``
- ``densetune evaluate --model M --data BEIR_DIR --split test [--save-dir DIR] [--out metrics.json]``
  (``--dim 384,256,128,64``: the embeddings cut to each of those dimensions, one row each, one encoding)

Both print a table (metrics as rows, cut-offs as columns) and optionally write JSON:
``{"metrics": {"ndcg@10": ...}, "queries": n, ...}`` (plus ``"per_query"`` with ``--per-query``).
Metric conventions are trec_eval's; see :mod:`densetune.retrieval.metrics`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from densetune.errors import DataError, DensetuneError
from densetune.models.matryoshka import add_dim_argument, parse_dims
from densetune.paths import add_overwrite_argument, check_output, write_text_atomic
from densetune.precision import add_precision_argument
from densetune.retrieval.metrics import (
    DEFAULT_METRICS,
    MISSING_QUERY_MODES,
    evaluate_per_query,
    mean_metrics,
    metrics_with_cutoffs,
    parse_metrics,
)
from densetune.retrieval.search import INDEX_TYPES, SearchConfig

METRIC_NAMES = ("ndcg", "mrr", "recall", "map", "p", "accuracy")


def evaluate_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Iterable[str] = DEFAULT_METRICS,
    *,
    missing_queries: str = "skip",
    ignore_identical_ids: bool = False,
    relevance_level: int = 1,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query metrics of a run (see :func:`densetune.retrieval.metrics.evaluate_per_query`).

    Returns:
        ``(means, per_query)``.
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
    return mean_metrics(per_query, metrics), per_query


def _top_k_for(metrics: list) -> int:
    cut = [m.k for m in metrics if m.k is not None]
    uncut = any(m.k is None for m in metrics)
    return max(cut + [1000 if uncut else 100])


def retrieve_beir(
    model_or_path: Any,
    beir_dir: str | Path,
    split: str = "test",
    *,
    dim: int | None = None,
    **kwargs: Any,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """Encode a BEIR split's queries and the corpus, and search: returns ``(run, qrels)``.

    Arguments as in :func:`evaluate_model`; with ``save_dir`` the embeddings and ``run.trec`` are written.
    """
    runs, qrels = retrieve_beir_dims(model_or_path, beir_dir, split, [dim], **kwargs)
    return runs[dim], qrels


def retrieve_beir_dims(
    model_or_path: Any,
    beir_dir: str | Path,
    split: str,
    dims: Sequence[int | None],
    *,
    top_k: int = 100,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | None = None,
    search_config: SearchConfig | None = None,
    save_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    precision: str | None = None,
) -> tuple[dict[int | None, dict[str, dict[str, float]]], dict[str, dict[str, int]]]:
    """:func:`retrieve_beir` at each of ``dims`` from one encoding: ``({dim: run}, qrels)``.

    Each dim cuts the embeddings to their first ``dim`` dimensions (renormalised when the model normalises;
    :func:`densetune.models.matryoshka.truncate`); None searches them whole. With ``save_dir`` the whole
    embeddings are written, and the run of each dim as ``run.trec`` (dim None) or ``run.dim{K}.trec``.
    """
    from densetune.data.inputs import open_corpus, read_queries
    from densetune.data.trec import read_qrels, write_run
    from densetune.models.loaders import load_encoder
    from densetune.models.matryoshka import check_width, truncate
    from densetune.retrieval.embeddings import QUERY, load_embeddings, write_embeddings
    from densetune.retrieval.encode import embed_texts, encode_corpus, encoder_meta
    from densetune.retrieval.search import search_run

    beir_dir = Path(beir_dir)
    query_ids, query_texts = read_queries(beir_dir, split)
    qrels = read_qrels(beir_dir / "qrels" / f"{split}.tsv")
    source = open_corpus(beir_dir, cache_dir=cache_dir)
    encoder = load_encoder(model_or_path, device=device, precision=precision)
    check_width(dims, encoder)
    kwargs = {"batch_size": batch_size, "max_length": max_length, "show_progress": show_progress}
    query_emb = embed_texts(encoder, query_texts, is_query=True, **kwargs)
    if save_dir is None:
        doc_ids, doc_emb = (
            source.ids,
            embed_texts(encoder, source.texts(0, len(source)), is_query=False, **kwargs),
        )
    else:
        # the same layout (and resume) as `densetune encode`, so `densetune mine` can reuse these embeddings
        save_dir = Path(save_dir)
        model_name = str(model_or_path) if isinstance(model_or_path, (str, Path)) else ""
        meta = encoder_meta(encoder, model_name, max_length)
        encode_corpus(encoder, source, save_dir, meta=meta, overwrite=True, **kwargs)
        doc_ids, doc_emb = load_embeddings(save_dir, "doc")
        write_embeddings(save_dir, QUERY, query_ids, query_emb, meta=meta)
    normalized = bool(getattr(getattr(encoder, "config", None), "normalize", False))
    runs = {}
    for dim in dims:
        q, d = truncate(query_emb, dim, normalized), truncate(doc_emb, dim, normalized)
        runs[dim] = search_run(query_ids, q, doc_ids, d, top_k, search_config)
        if save_dir is not None:
            write_run(runs[dim], save_dir / ("run.trec" if dim is None else f"run.dim{dim}.trec"))
    return runs, qrels


def evaluate_model(
    model_or_path: Any,
    beir_dir: str | Path,
    split: str = "test",
    *,
    dim: int | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """Encode a BEIR split's queries and corpus with a model, search, and evaluate.

    Args:
        model_or_path: a model directory, or an object with ``encode_texts`` (e.g. a
            :class:`densetune.models.biencoder.BiEncoder` being trained: used as it is; BiEncoder's
            ``encode_texts`` switches to eval mode and back).
        beir_dir: BEIR directory (corpus.jsonl, queries.jsonl, qrels/{split}.tsv).
        split: qrels split; only its queries are encoded.
        dim: search the first ``dim`` dimensions of the embeddings (Matryoshka; renormalised when the
            model normalises); None: all.
        metrics: metric names (default ndcg@10, mrr@10, recall@100, map@100, p@10, accuracy@10).
        top_k: documents retrieved per query; default: the largest cut-off (at least 100).
        batch_size / max_length / device: encoding settings.
        search_config: search settings (default exact).
        save_dir: also write query/doc embeddings, ``run.trec`` and ``metrics.json`` there.
        missing_queries / ignore_identical_ids: see :mod:`densetune.retrieval.metrics`.
        cache_dir: corpus cache directory.
        show_progress: tqdm bars.
        precision: ``auto`` | ``bf16`` | ``fp32`` for the model's forwards (:mod:`densetune.precision`);
            None: the model as it is.

    Returns:
        ``{metric: mean value}``, e.g. ``{"ndcg@10": 0.645, ...}``.

    Example:
        >>> evaluate_model("path/to/model", "data/scifact", "test")["ndcg@10"]
    """
    return evaluate_dims(model_or_path, beir_dir, split, [dim], **kwargs)[dim]


def evaluate_dims(
    model_or_path: Any,
    beir_dir: str | Path,
    split: str,
    dims: Sequence[int | None],
    *,
    metrics: Iterable[str] = DEFAULT_METRICS,
    top_k: int | None = None,
    save_dir: str | Path | None = None,
    missing_queries: str = "skip",
    ignore_identical_ids: bool = False,
    **kwargs: Any,
) -> dict[int | None, dict[str, float]]:
    """:func:`evaluate_model` at each of ``dims`` (None: whole embeddings) from one encoding: ``{dim: means}``.

    Example:
        >>> evaluate_dims("runs/mrl/model", "data/scifact", "test", [384, 128, 64])[64]["ndcg@10"]
    """
    metrics = parse_metrics(metrics)
    runs, qrels = retrieve_beir_dims(
        model_or_path, beir_dir, split, dims, top_k=top_k or _top_k_for(metrics), save_dir=save_dir, **kwargs
    )
    by_dim, queries = {}, 0
    for dim, run in runs.items():
        by_dim[dim], per_query = evaluate_run(
            run, qrels, metrics, missing_queries=missing_queries, ignore_identical_ids=ignore_identical_ids
        )
        queries = len(per_query)
    if save_dir is not None:
        model_name = str(model_or_path) if isinstance(model_or_path, (str, Path)) else ""
        report = {"metrics": by_dim[dims[0]], "queries": queries, "data": str(beir_dir), "split": split}
        report["model"] = model_name
        if dims != [None]:
            report["metrics_by_dim"] = {str(dim): means for dim, means in by_dim.items()}
        write_text_atomic(Path(save_dir) / "metrics.json", json.dumps(report, indent=2))
    return by_dim


# ---------------------------------------------------------------------------------------------------------
# Output


def format_table(means: Mapping[str, float]) -> str:
    """Metrics as rows, cut-offs as columns: ``ndcg  0.6451 ...``; uncut metrics in a last column."""
    parsed = parse_metrics(means)
    names = list(dict.fromkeys(m.name for m in parsed))
    cuts = sorted({m.k for m in parsed if m.k is not None})
    columns = [f"@{k}" for k in cuts] + (["all"] if any(m.k is None for m in parsed) else [])
    lines = [f"{'metric':<9}" + "".join(f"{c:>9}" for c in columns)]
    for name in names:
        cells = []
        for k in cuts + ([None] if "all" in columns else []):
            label = name if k is None else f"{name}@{k}"
            cells.append(f"{means[label]:>9.4f}" if label in means else f"{'-':>9}")
        lines.append(f"{name:<9}" + "".join(cells))
    return "\n".join(lines)


def format_dim_table(by_dim: Mapping[int | None, Mapping[str, float]]) -> str:
    """One row per embedding dimension (``dim  ndcg@10  mrr@10 ...``), one column per metric."""
    labels = list(next(iter(by_dim.values())))
    width = max(10, *(len(label) + 2 for label in labels))
    lines = [f"{'dim':<6}" + "".join(f"{label:>{width}}" for label in labels)]
    for dim, means in by_dim.items():
        lines.append(f"{dim or 'all'!s:<6}" + "".join(f"{means[label]:>{width}.4f}" for label in labels))
    return "\n".join(lines)


def _metric_list(metrics: str | None, k: str | None) -> list[str]:
    names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    if k is None:
        return names or list(DEFAULT_METRICS)
    try:
        cutoffs = [int(x) for x in k.split(",") if x.strip()]
    except ValueError:
        raise DensetuneError(f"--k must be comma-separated integers, got {k!r}") from None
    return metrics_with_cutoffs(names or list(METRIC_NAMES), cutoffs)


# ---------------------------------------------------------------------------------------------------------
# densetune evaluate


def configure_parser(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("a run file")
    src.add_argument("--run", help="TREC run file (qid Q0 docid rank score tag)")
    src.add_argument(
        "--qrels",
        help="qrels: TREC (qid 0 docid rel), BEIR TSV, a BEIR directory, a NeMo query file (doc_id labels) "
        "or a training file whose positives have ids",
    )
    mdl = parser.add_argument_group("a model on a BEIR split")
    mdl.add_argument("--model", help="model directory")
    mdl.add_argument("--data", help="BEIR directory")
    mdl.add_argument("--split", default="test", help="qrels split (default: test)")
    mdl.add_argument("--save-dir", help="also write the embeddings and run.trec here")
    mdl.add_argument(
        "--top-k", type=int, default=None, help="documents retrieved per query (default: max cut-off)"
    )
    mdl.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: 64)")
    mdl.add_argument("--max-length", type=int, default=None, help="token limit (default: the model's)")
    mdl.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    add_precision_argument(mdl)
    mdl.add_argument("--index", choices=INDEX_TYPES, default="exact", help="search method (default: exact)")
    mdl.add_argument("--cache-dir", default=None, help="corpus cache (default: $DENSETUNE_CACHE)")
    add_dim_argument(mdl, several=True)
    parser.add_argument(
        "--metrics",
        help="comma-separated metrics: ndcg, mrr, recall, map, p, accuracy, with @k or expanded over --k "
        f"(default: {','.join(DEFAULT_METRICS)})",
    )
    parser.add_argument(
        "--k", help="comma-separated cut-offs for metrics given without @k, e.g. 1,3,5,10,100"
    )
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.add_argument("--per-query", action="store_true", help="include per-query values in --out")
    parser.add_argument(
        "--missing-queries",
        choices=MISSING_QUERY_MODES,
        default="skip",
        help="qrels queries absent from the run: skip (pytrec_eval, default) or zero (trec_eval -c)",
    )
    parser.add_argument(
        "--ignore-identical-ids",
        action="store_true",
        help="drop documents whose id equals the query id (BEIR)",
    )
    parser.add_argument("--relevance-level", type=int, default=1, help="smallest relevant grade (default: 1)")
    add_overwrite_argument(parser, "--out and the outputs in --save-dir")


def main(args: argparse.Namespace) -> int:
    from densetune.data.qrels import load_qrels
    from densetune.data.trec import read_run

    metrics = [m.label for m in parse_metrics(_metric_list(args.metrics, args.k))]
    dims: list[int | None] = list(parse_dims(args.dim) or [None])
    for path in (args.out, args.save_dir):
        if path:
            check_output(path, args.overwrite)
    start = time.perf_counter()
    if args.run or args.qrels:
        if not (args.run and args.qrels):
            raise DensetuneError("give both --run and --qrels (or --model and --data)")
        if args.model or args.data:
            raise DensetuneError("give either --run/--qrels or --model/--data, not both")
        if args.dim:
            raise DensetuneError("--dim truncates a model's embeddings: give --model and --data, not a run")
        qrels = load_qrels(args.qrels, args.split)  # qrels, a NeMo query file or a training file with ids
        runs = {None: read_run(args.run)}
        source = {"run": str(args.run), "qrels": str(args.qrels)}
    elif args.model and args.data:
        from densetune.data.beir import is_beir_dir

        if not is_beir_dir(args.data):
            raise DataError(
                "not a BEIR directory; expected corpus.jsonl, queries.jsonl and qrels/", args.data
            )
        runs, qrels = retrieve_beir_dims(
            args.model,
            args.data,
            args.split,
            dims,
            top_k=args.top_k or _top_k_for(parse_metrics(metrics)),
            batch_size=args.batch_size,
            max_length=args.max_length,
            device=args.device,
            search_config=SearchConfig(index=args.index, device=args.device),
            save_dir=args.save_dir,
            cache_dir=args.cache_dir,
            precision=args.precision,
        )
        source = {"model": str(args.model), "data": str(args.data), "split": args.split}
    else:
        raise DensetuneError("nothing to evaluate: give --run and --qrels, or --model and --data")
    by_dim, per_query_by_dim = {}, {}
    for dim, run in runs.items():
        by_dim[dim], per_query_by_dim[dim] = evaluate_run(
            run,
            qrels,
            metrics,
            missing_queries=args.missing_queries,
            ignore_identical_ids=args.ignore_identical_ids,
            relevance_level=args.relevance_level,
        )
    first = dims[0]
    means, per_query = by_dim[first], per_query_by_dim[first]
    if not per_query:
        raise DataError(
            "no query of the run has relevance judgements (0 queries to evaluate); expected a run and qrels "
            "with query ids in common",
            args.run or args.data,
        )
    if len(dims) > 1:
        print(format_dim_table(by_dim))
    else:
        print(format_table(means) + (f"\n(first {first} dimensions)" if first else ""))
    print(f"{len(per_query)} queries evaluated in {time.perf_counter() - start:.1f}s")
    if args.out:
        report: dict[str, Any] = {"metrics": means, "queries": len(per_query), **source}
        if first is not None:
            # "metrics" holds the first --dim's; each dim's in "metrics_by_dim"
            report["dim"] = first
            report["metrics_by_dim"] = {str(dim): values for dim, values in by_dim.items()}
        if args.per_query:
            report["per_query"] = per_query
        write_text_atomic(args.out, json.dumps(report, indent=2))
    return 0
