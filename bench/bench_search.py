"""Benchmark: top-k search methods side by side: densetune exact (chunked), a full score matrix, faiss.

Data (generated once into ``--dir``): ``--passages`` unit vectors in ``--clusters`` clusters (so approximate
indexes face realistic neighbourhoods), stored as float16 ``doc.npy``, and ``--queries`` queries near them.

Rows, each in a fresh process (peak memory is its own), top-``--top-k`` by inner product:

- ``densetune exact``: :func:`densetune.retrieval.search.exact_search` on the memory-mapped corpus.
- ``full score matrix``: corpus in float32 RAM, ``[queries, passages]`` scores at once, one ``torch.topk``.
- ``faiss flat`` / ``faiss ivf`` / ``faiss hnsw``: :func:`densetune.retrieval.search.faiss_search` (the
  index build is included in the time; it is reported separately too).

Reported: wall time, peak anonymous memory (RssAnon sampled every 20 ms), and recall@10 / recall@k of each
method's results against ``densetune exact`` (1.000 = identical neighbour sets).

Usage:
    python bench/bench_search.py                       # 200k x 1k queries, top-100
    python bench/bench_search.py --passages 1000000 --methods exact,flat,ivf
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from bench_common import PeakAnon, print_header, print_machine, run_child

METHODS = ("exact", "full", "flat", "ivf", "hnsw")
DEFAULT_METHODS = "exact,full,flat,ivf"  # hnsw builds slowly on small CPUs: ask for it
NAMES = {
    "exact": "densetune exact",
    "full": "full score matrix",
    "flat": "faiss flat",
    "ivf": "faiss ivf",
    "hnsw": "faiss hnsw",
}


def generate(directory: Path, passages: int, queries: int, dim: int, clusters: int, seed: int = 0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"passages": passages, "queries": queries, "dim": dim, "clusters": clusters, "seed": seed}
    if (directory / "meta.json").is_file() and json.loads((directory / "meta.json").read_text()) == meta:
        return
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    docs = np.lib.format.open_memmap(
        directory / "doc.npy", mode="w+", dtype=np.float16, shape=(passages, dim)
    )
    for start in range(0, passages, 100_000):
        n = min(100_000, passages - start)
        block = centers[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
        docs[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    docs.flush()
    q = centers[rng.integers(0, clusters, queries)] + 0.5 * rng.standard_normal((queries, dim)).astype(
        np.float32
    )
    np.save(directory / "queries.npy", (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))
    (directory / "meta.json").write_text(json.dumps(meta))


def run_one(directory: Path, method: str, top_k: int, threads: int | None) -> dict:
    import torch

    from densetune.retrieval.search import SearchConfig, build_faiss_index, exact_search

    if threads:
        torch.set_num_threads(threads)
    sampler = PeakAnon()
    docs = np.load(directory / "doc.npy", mmap_mode="r")
    queries = np.load(directory / "queries.npy")
    build = 0.0
    start = time.perf_counter()
    if method == "exact":
        _, idx = exact_search(queries, docs, top_k, device="cpu")
    elif method == "full":
        full = torch.from_numpy(np.asarray(docs, dtype=np.float32))
        _, idx = torch.topk(torch.from_numpy(queries) @ full.T, top_k, dim=1)
        idx = idx.numpy()
    else:
        config = SearchConfig(index=method)
        index = build_faiss_index(docs, config)
        build = time.perf_counter() - start
        _, idx = index.search(queries, top_k)
    elapsed = time.perf_counter() - start
    anon = sampler.stop()
    np.save(directory / f"result-{method}.npy", idx.astype(np.int64))
    return {"method": method, "seconds": elapsed, "build_seconds": build, "peak_anon_mb": anon}


def recall(result: np.ndarray, reference: np.ndarray, k: int) -> float:
    return float(
        np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(result.tolist(), reference.tolist())])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument(
        "--methods", default=DEFAULT_METHODS, help=f"comma-separated, from {','.join(METHODS)}"
    )
    parser.add_argument("--dir", default="/tmp/densetune-bench-search")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    directory = Path(args.dir)
    if args.child:
        print(json.dumps(run_one(directory, args.child, args.top_k, args.threads)))
        return
    methods = [m for m in args.methods.split(",") if m]
    if "exact" not in methods:
        methods.insert(0, "exact")  # the reference for recall
    generate(directory, args.passages, args.queries, args.dim, args.clusters)
    print(f"{args.passages} passages x {args.queries} queries, dim {args.dim}, top-{args.top_k}")
    print_machine()
    rows = []
    for method in methods:
        rows.append(run_child(__file__, directory, method, args.threads, "--top-k", str(args.top_k)))
    reference = np.load(directory / "result-exact.npy")
    base = rows[0]["seconds"]
    header = f"{'method':<18} {'time s':>8} {'build s':>8} {'vs exact':>9} {'peak anon MB':>13} {'R@10':>7} {f'R@{args.top_k}':>7}"
    print()
    print_header(header)
    for r in rows:
        result = np.load(directory / f"result-{r['method']}.npy")
        print(
            f"{NAMES[r['method']]:<18} {r['seconds']:>8.2f} {r['build_seconds']:>8.2f} {r['seconds'] / base:>8.2f}x "
            f"{r['peak_anon_mb']:>13.0f} {recall(result, reference, 10):>7.3f} {recall(result, reference, args.top_k):>7.3f}"
        )
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
