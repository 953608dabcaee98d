"""Benchmark: compact indexes (float16, int8, binary, binary + rescoring) against exact float32 search.

Two parts, each a table with every row's ratio against float32 measured in the same run:

1. Generated corpus (``--passages`` x ``--dim``, default 1M x 384; ``--clusters`` seeded clusters of unit
   vectors, ``--queries`` queries near them): the bytes the search holds in memory, the bytes of the
   rescoring store (memory-mapped: only the candidates' rows are read), queries/s, and Recall@100 against
   exact float32 search.
2. SciFact test split with all-MiniLM-L6-v2: the corpus and queries encoded once (``--precision auto``:
   bf16 on this CPU; cached in ``--dir``), the same float embeddings quantized to each dtype
   (``densetune.retrieval.quantize``), searched, and nDCG@10 against the float32 run's.

Rows: float32 (exact search), float16 (exact), int8 (the float query against the codes), binary (Hamming
distance alone), binary rescored as +-1 (``top_k * m`` Hamming candidates), binary + int8 rescoring store
(sentence-transformers' recipe: binary index in memory, int8 vectors on disk). ``m`` is
``--rescore-multipliers`` (default 4 and 10). Search is :func:`densetune.retrieval.search.search`, what
``densetune search`` runs (the binary rows include building the faiss ``IndexBinaryFlat``).

Usage:
    python bench/bench_compact.py                                 # 1M x 384, 300 queries, SciFact
    python bench/bench_compact.py --passages 100000 --skip-scifact
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_common import SCIFACT, default_model, print_machine, scifact_missing, set_offline_env


def generate(passages: int, queries: int, dim: int, clusters: int, seed: int):
    """Unit vectors around seeded cluster centres (float32), and queries drawn the same way."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    docs = np.empty((passages, dim), dtype=np.float32)
    for start in range(0, passages, 100_000):
        n = min(100_000, passages - start)
        block = centers[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
        docs[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    q = centers[rng.integers(0, clusters, queries)] + 0.6 * rng.standard_normal((queries, dim)).astype(
        np.float32
    )
    return docs, q / np.linalg.norm(q, axis=1, keepdims=True)


def corpora(docs: np.ndarray, multipliers: list[int], directory: Path, name: str):
    """(row label, corpus for search(), rescore multiplier, memory bytes, store bytes) for every row, made
    one at a time (a million rows in every dtype at once would not fit beside the other jobs)."""
    from densetune.retrieval import quantize

    dim = docs.shape[1]
    yield "float32", docs, 0, docs.nbytes, 0
    yield "float16", docs.astype(np.float16), 0, docs.nbytes // 2, 0
    ranges = quantize.calibrate_int8([docs])
    int8 = quantize.quantize_int8(docs, ranges)
    yield "int8", quantize.CompactCorpus(int8, "int8", dim, ranges), 0, int8.nbytes + ranges.nbytes, 0
    # the int8 store is read memory-mapped, as search reads doc.rescore.npy
    store_path = directory / f"{name}.rescore-int8.npy"
    np.save(store_path, int8)
    del int8
    store = np.load(store_path, mmap_mode="r")
    binary = quantize.quantize_binary(docs)
    yield "binary (Hamming only)", quantize.CompactCorpus(binary, "binary", dim), 0, binary.nbytes, 0
    for m in multipliers:
        label = f"binary, rescored as +-1, {m}x"
        yield label, quantize.CompactCorpus(binary, "binary", dim), m, binary.nbytes, 0
    for m in multipliers:
        corpus = quantize.CompactCorpus(binary, "binary", dim, ranges, store)
        yield f"binary + int8 rescoring, {m}x", corpus, m, binary.nbytes, store.nbytes


def timed_search(queries, corpus, top_k, multiplier):
    from densetune.retrieval.search import SearchConfig, search

    start = time.perf_counter()
    scores, rows = search(queries, corpus, top_k, SearchConfig(device="cpu", rescore_multiplier=multiplier))
    return scores, rows, time.perf_counter() - start


def recall(rows: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(rows.tolist(), truth.tolist())]))


def mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n else "-"


def generated_part(args, directory: Path) -> list[dict]:
    docs, queries = generate(args.passages, args.queries, args.dim, args.clusters, args.seed)
    print(
        f"\n{args.passages:,} x {args.dim} generated corpus ({args.clusters} clusters), {args.queries} queries, top-{args.top_k}"
    )
    results = []
    truth = None
    base = None
    for label, corpus, m, memory, store in corpora(docs, args.rescore_multipliers, directory, "generated"):
        _, rows, seconds = timed_search(queries, corpus, args.top_k, m)
        if truth is None:
            truth, base = rows, {"memory": memory, "qps": len(queries) / seconds}
        results.append(
            {
                "row": label,
                "memory": memory,
                "store": store,
                "qps": len(queries) / seconds,
                "recall": recall(rows, truth),
            }
        )
        print(f"  {label}: {seconds:.1f}s", flush=True)
    header = "| index | memory | vs float32 | rescoring store (mmap) | queries/s | vs float32 | Recall@100 |"
    print()
    print(header)
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['row']} | {mb(r['memory'])} | 1/{base['memory'] / r['memory']:.1f} | {mb(r['store'])} | "
            f"{r['qps']:,.0f} | {r['qps'] / base['qps']:.2f}x | {r['recall']:.3f} |"
        )
    return results


def scifact_embeddings(args, directory: Path):
    """SciFact test queries and corpus embedded once with the model (cached in ``directory/scifact``)."""
    from densetune.data.inputs import open_corpus, read_queries
    from densetune.models.loaders import load_encoder
    from densetune.retrieval.embeddings import load_embeddings
    from densetune.retrieval.encode import encode_corpus, encode_queries, encoder_meta

    out = directory / "scifact"
    model = args.model or default_model()
    if not (out / "query.npy").is_file() or not (out / "doc.npy").is_file():
        encoder = load_encoder(model, device="cpu", precision="auto")
        meta = encoder_meta(encoder, model)
        start = time.perf_counter()
        encode_corpus(encoder, open_corpus(args.data), out, meta=meta, show_progress=False)
        ids, texts = read_queries(args.data, "test")
        encode_queries(encoder, ids, texts, out, meta=meta, show_progress=False)
        print(f"encoded SciFact ({meta['precision']}) in {time.perf_counter() - start:.0f}s")
    query_ids, queries = load_embeddings(out, "query", mmap=False)
    doc_ids, docs = load_embeddings(out, "doc", mmap=False)
    return query_ids, np.asarray(queries), doc_ids, np.asarray(docs)


def scifact_part(args, directory: Path) -> list[dict]:
    from densetune.data.trec import read_qrels
    from densetune.retrieval.metrics import evaluate
    from densetune.retrieval.topk import to_run

    query_ids, queries, doc_ids, docs = scifact_embeddings(args, directory)
    qrels = read_qrels(Path(args.data) / "qrels" / "test.tsv")
    print(f"\nSciFact test: {len(query_ids)} queries x {len(doc_ids):,} documents, all-MiniLM-L6-v2, nDCG@10")
    results = []
    for label, corpus, m, memory, store in corpora(docs, args.rescore_multipliers, directory, "scifact"):
        scores, rows, _ = timed_search(queries, corpus, 100, m)
        ndcg = evaluate(qrels, to_run(query_ids, doc_ids, scores, rows), ["ndcg@10"])["ndcg@10"]
        results.append({"row": label, "memory": memory, "store": store, "ndcg": ndcg})
    base = results[0]
    header = "| index | memory | vs float32 | rescoring store (mmap) | nDCG@10 | of float32 |"
    print()
    print(header)
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['row']} | {mb(r['memory'])} | 1/{base['memory'] / r['memory']:.1f} | {mb(r['store'])} | "
            f"{r['ndcg']:.4f} | {100 * r['ndcg'] / base['ndcg']:.1f}% |"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="bench_out/compact", help="working folder (embeddings cached here)")
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rescore-multipliers", type=lambda s: [int(x) for x in s.split(",")], default=[4, 10]
    )
    parser.add_argument(
        "--model", default=None, help="model folder (default: the installed all-MiniLM-L6-v2)"
    )
    parser.add_argument("--data", default=str(SCIFACT), help="BEIR SciFact folder")
    parser.add_argument("--skip-scifact", action="store_true")
    parser.add_argument("--skip-generated", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    set_offline_env()
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    print_machine()
    results = {}
    if not args.skip_generated:
        results["generated"] = generated_part(args, directory)
    if not args.skip_scifact and not scifact_missing(args.data):
        results["scifact"] = scifact_part(args, directory)
    import os

    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
