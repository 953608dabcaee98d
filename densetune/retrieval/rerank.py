"""``densetune rerank``: rescore the top-k documents of each query of a TREC run with a cross-encoder.

For every query of the run, its documents are ranked as the run ranks them (score descending, ties in file
order); the first ``--top-k`` get the reranker's score of ``(query text, document text)`` (document text =
``title + " " + text``) and are re-sorted by it. Documents below the top-k keep their order and come after
every reranked document: they get scores ``min(reranked) - 1, min(reranked) - 2, ...`` (their original scores
are on another scale and could interleave). The result is written as a TREC run (atomically) and one line
summarises the work, with nDCG@10 before and after when the dataset has qrels for ``--split``.

Query and document texts come from a BEIR directory (``corpus.jsonl``, ``queries.jsonl``); a query or
document id of the run that the dataset lacks is an error naming the run file, its line and the id.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from densetune.data.trec import Run, read_run, write_run
from densetune.errors import DataError, DensetuneError
from densetune.paths import add_overwrite_argument, check_output
from densetune.precision import add_precision_argument

# pairs handed to the model per call: enough for length sorting to pay, small enough for memory
_PAIRS_PER_CALL = 4096


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="reranker folder (or hub name available offline)")
    parser.add_argument("--run", required=True, help="TREC run to rerank (qid Q0 docid rank score tag)")
    parser.add_argument("--data", required=True, help="BEIR directory with corpus.jsonl and queries.jsonl")
    parser.add_argument(
        "--split", default="test", help="qrels split for the before/after nDCG@10 (default test)"
    )
    parser.add_argument("--top-k", type=int, default=100, help="documents per query to rerank (default 100)")
    parser.add_argument("--out", required=True, help="the reranked TREC run")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass (default 32)")
    parser.add_argument(
        "--max-length", type=int, default=None, help="token limit of a pair (default: the model's)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="model dtype: float32 (default), bfloat16, float16")
    add_precision_argument(parser)
    parser.add_argument("--tag", default="densetune-rerank", help="run tag written in the last column")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overwrite_argument(parser, "the --out run file")


def ranked_documents(docs: Mapping[str, float]) -> list[str]:
    """Document ids by score descending; ties keep their order in ``docs`` (the run file's order)."""
    return [d for d, _ in sorted(docs.items(), key=lambda kv: -kv[1])]


def rerank_run(
    model: Any,
    run: Mapping[str, Mapping[str, float]],
    queries: Mapping[str, str],
    corpus: Any,
    *,
    top_k: int = 100,
    batch_size: int = 32,
    run_path: str | Path | None = None,
    show_progress: bool = False,
) -> tuple[Run, int]:
    """Rerank the top ``top_k`` documents of every query of ``run``.

    Args:
        model: a :class:`~densetune.models.crossencoder.CrossEncoder` (anything with ``score_pairs``).
        run: ``{query id: {doc id: score}}``.
        queries: ``{query id: text}``.
        corpus: a :class:`~densetune.data.corpus.Corpus` (``rows(ids)``, ``docs(rows)``).
        top_k: documents per query to rescore (>= 1).
        batch_size: pairs per forward pass.
        run_path: the run file, named (with the line) in errors about unknown ids.
        show_progress: a tqdm bar over queries.

    Returns:
        ``(new run, number of pairs scored)``.

    Raises:
        DataError: a query id not in ``queries`` or a document id not in ``corpus``.
    """
    import numpy as np

    from densetune.data.corpus import doc_text

    if top_k < 1:
        raise DensetuneError(f"--top-k must be >= 1, got {top_k}")
    heads: dict[str, list[str]] = {}
    tails: dict[str, list[str]] = {}
    for qid, docs in run.items():
        if qid not in queries:
            raise _unknown_id(run_path, qid, None, f"query id {qid!r} is not in the dataset's queries")
        ranked = ranked_documents(docs)
        heads[qid], tails[qid] = ranked[:top_k], ranked[top_k:]

    new_run: Run = {}
    qids = list(heads)
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(qids), desc="rerank", unit="query", disable=None, file=sys.stderr)
    n_pairs = 0
    start = 0
    while start < len(qids):
        # a slice of queries whose pairs make one call (at least one query)
        stop, size = start, 0
        while stop < len(qids) and (size == 0 or size + len(heads[qids[stop]]) <= _PAIRS_PER_CALL):
            size += len(heads[qids[stop]])
            stop += 1
        part = qids[start:stop]
        ids = [d for q in part for d in heads[q]]
        rows = corpus.rows(ids) if ids else np.zeros(0, dtype=np.int64)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            did = ids[int(missing[0])]
            qid = next(q for q in part if did in heads[q])
            raise _unknown_id(run_path, qid, did, f"document id {did!r} is not in the corpus")
        texts = [doc_text(d) for d in corpus.docs(rows)]
        pair_queries = [queries[q] for q in part for _ in heads[q]]
        scores = model.score_pairs(pair_queries, texts, batch_size=batch_size).tolist() if ids else []
        at = 0
        for q in part:
            head = heads[q]
            reranked = dict(zip(head, scores[at : at + len(head)]))
            at += len(head)
            floor = min(reranked.values()) if reranked else 0.0
            for j, did in enumerate(tails[q]):
                reranked[did] = floor - 1.0 - j  # below every reranked document, in the original order
            new_run[q] = reranked
        n_pairs += len(ids)
        if bar is not None:
            bar.update(len(part))
        start = stop
    if bar is not None:
        bar.close()
    return new_run, n_pairs


def rerank_beir(
    model: Any,
    beir_dir: str,
    split: str,
    run_path: str | Path,
    *,
    top_k: int = 100,
    batch_size: int = 32,
    metrics: Sequence[str] = ("ndcg@10", "mrr@10", "recall@100"),
) -> dict[str, float]:
    """Rerank a first-stage TREC run on a BEIR dataset's ``split`` and return the mean metrics of the result.

    What the training loop reports for a cross-encoder, and ``densetune rerank`` prints.

    Raises:
        DataError: no ``qrels/{split}.tsv`` in ``beir_dir``, or ids of the run unknown to the dataset.
    """
    from densetune.retrieval.metrics import evaluate

    queries, corpus, qrels = _load_dataset(beir_dir, split)
    if not qrels:
        raise DataError(f"no qrels/{split}.tsv: cannot evaluate the reranked run", beir_dir)
    new_run, _ = rerank_run(
        model, read_run(run_path), queries, corpus, top_k=top_k, batch_size=batch_size, run_path=run_path
    )
    return evaluate(qrels, new_run, tuple(metrics))


def check_run_ids(
    run: Run, queries: Mapping[str, str], corpus: Any, top_k: int, run_path: str | Path
) -> None:
    """Check, before any scoring, that every query of ``run`` and its top ``top_k`` documents are known.

    What :func:`rerank_run` would find batch by batch; the training loop's pre-flight calls this so a bad
    run stops the run before the model loads.

    Raises:
        DataError: the first unknown query or document id, with the run file's line.
    """
    import numpy as np

    pairs = []
    for qid, docs in run.items():
        if qid not in queries:
            raise _unknown_id(run_path, qid, None, f"query id {qid!r} is not in the dataset's queries")
        pairs += [(qid, did) for did in ranked_documents(docs)[:top_k]]
    rows = corpus.rows([did for _, did in pairs]) if pairs else np.zeros(0, dtype=np.int64)
    missing = np.flatnonzero(rows < 0)
    if missing.size:
        qid, did = pairs[int(missing[0])]
        raise _unknown_id(run_path, qid, did, f"document id {did!r} is not in the corpus")


def _unknown_id(run_path: str | Path | None, qid: str, did: str | None, message: str) -> DataError:
    """A DataError at the run line holding this query (and document) id."""
    line = None
    if run_path is not None:
        with open(run_path, encoding="utf-8") as f:
            for lineno, raw in enumerate(f, 1):
                parts = raw.split()
                if len(parts) >= 3 and parts[0] == qid and (did is None or parts[2] == did):
                    line = lineno
                    break
    return DataError(message, run_path, line, "docid" if did is not None else "qid")


def _load_dataset(directory: str, split: str):
    """(queries, corpus, qrels or None): qrels only when ``qrels/{split}.tsv`` exists."""
    from densetune.data.beir import is_beir_dir, load_beir, read_queries
    from densetune.data.corpus import load_corpus

    path = Path(directory)
    if (path / "qrels" / f"{split}.tsv").is_file():
        data = load_beir(path, split)
        return data.queries, data.corpus, data.qrels
    if not is_beir_dir(path):
        what = "directory not found" if not path.exists() else "not a BEIR dataset directory"
        raise DataError(f"{what}; expected corpus.jsonl and queries.jsonl", path)
    return read_queries(path / "queries.jsonl"), load_corpus(path, corpus_id=path.name), None


def main(args: argparse.Namespace) -> int:
    from densetune.models.loaders import check_model_path, load_reranker

    if args.top_k < 1:
        raise DensetuneError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise DensetuneError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_output(args.out, args.overwrite)
    run = read_run(args.run)
    queries, corpus, qrels = _load_dataset(args.data, args.split)
    model_path = check_model_path(args.model)
    model = load_reranker(
        model_path, max_length=args.max_length, dtype=args.dtype, device=args.device, precision=args.precision
    )

    start = time.perf_counter()
    new_run, n_pairs = rerank_run(
        model,
        run,
        queries,
        corpus,
        top_k=args.top_k,
        batch_size=args.batch_size,
        run_path=args.run,
        show_progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - start
    write_run(new_run, args.out, tag=args.tag)

    kept = sum(max(0, len(docs) - args.top_k) for docs in run.values())
    rate = n_pairs / elapsed if elapsed > 0 else 0.0
    line = (
        f"reranked the top {args.top_k} of {len(run)} queries ({n_pairs} pairs) in {elapsed:.1f} s "
        f"({rate:.1f} pairs/s); {kept} documents below the top {args.top_k} kept their order; wrote {args.out}"
    )
    if qrels:
        from densetune.retrieval.metrics import evaluate

        before = evaluate(qrels, run, ("ndcg@10",))["ndcg@10"]
        after = evaluate(qrels, new_run, ("ndcg@10",))["ndcg@10"]
        line += f"; nDCG@10 ({args.split}) {before:.4f} -> {after:.4f}"
    print(line)
    return 0
