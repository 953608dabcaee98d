"""Benchmark: hard-negative mining at corpus scale on one CPU machine, against a full-score-matrix baseline.

Data (generated once into ``--dir``, reused afterwards): ``--passages`` random unit vectors of ``--dim``
dimensions stored as a float16 ``doc.npy`` (1M x 384 = 768 MB), and ``--queries`` queries, each a noisy copy
of a random "positive" passage (positive score about 0.75), drawn from the first ``--baseline-passages``
rows so every configuration below has the positives in its corpus.

Rows, each in a fresh process (so peak memory is its own), all with the same selection rules
(15 negatives, ranks 0-100, relative margin 0.05, sampling top):

- ``densetune chunked``: :func:`densetune.retrieval.mine.mine_hard_negatives` on the memory-mapped float16
  corpus: exact search in corpus chunks with a running top-k, then vectorised selection.
- ``naive full matrix``: the whole corpus read into float32 RAM, the full ``[queries, passages]`` score matrix
  computed at once, then ``torch.topk`` and the same selection (what a miner holding all scores does).
  Only run on ``--baseline-passages`` (the size it can hold); densetune is run on that size too and the
  ratio printed, and the two must choose the same negatives.

Reported per row: wall time, peak RSS (VmHWM: includes the memory-mapped corpus pages, which are file-backed
page cache the kernel can drop), peak anonymous memory (RssAnon, sampled every 20 ms: the memory the
process really owns), and negatives per query.

Usage:
    python bench/bench_mine.py                              # 1M x 10k, baseline on 100k
    python bench/bench_mine.py --passages 200000 --queries 2000 --baseline-passages 50000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from bench_common import PeakAnon, print_header, print_machine, run_child, status_kb

# ------------------------------------------------------------------------------------------------ data


def generate(
    directory: Path, passages: int, queries: int, dim: int, positive_pool: int, seed: int = 0
) -> None:
    """Write doc.npy (float16 unit vectors), queries.npy (float32) and positives.npy, unless present."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "passages": passages,
        "queries": queries,
        "dim": dim,
        "positive_pool": positive_pool,
        "seed": seed,
    }
    meta_path = directory / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return
    rng = np.random.default_rng(seed)
    docs = np.lib.format.open_memmap(
        directory / "doc.npy", mode="w+", dtype=np.float16, shape=(passages, dim)
    )
    for start in range(0, passages, 100_000):
        block = rng.standard_normal((min(100_000, passages - start), dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        docs[start : start + len(block)] = block
    docs.flush()
    positives = rng.integers(0, min(positive_pool, passages), queries)
    q = docs[positives].astype(np.float32) + rng.standard_normal((queries, dim)).astype(
        np.float32
    ) * 0.9 / np.sqrt(dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    np.save(directory / "queries.npy", q.astype(np.float32))
    np.save(directory / "positives.npy", positives)
    meta_path.write_text(json.dumps(meta))


# ------------------------------------------------------------------------------------------------ one run


def run_one(directory: Path, method: str, passages: int, threads: int | None) -> dict:
    import torch

    from densetune.retrieval.mine import (
        MinedNegatives,
        MiningConfig,
        MiningStats,
        mine_hard_negatives,
        select_negatives,
    )

    if threads:
        torch.set_num_threads(threads)
    sampler = PeakAnon()
    docs = np.load(directory / "doc.npy", mmap_mode="r")[:passages]
    queries = np.load(directory / "queries.npy")
    positives = np.load(directory / "positives.npy")
    doc_ids = [str(i) for i in range(passages)]
    positive_ids = [[str(p)] for p in positives]
    config = MiningConfig()  # 15 negatives, ranks 0-100, relative margin 0.05, top
    start = time.perf_counter()
    if method == "chunked":
        mined = mine_hard_negatives(queries, positive_ids, docs, doc_ids, config)
    else:
        # the naive miner: all documents in float32 RAM, the full score matrix, one topk
        full = torch.from_numpy(np.asarray(docs, dtype=np.float32))
        scores = torch.from_numpy(queries) @ full.T  # [Q, N]
        depth = config.range_max + 1 + 8
        top_s, top_i = torch.topk(scores, depth, dim=1)
        pos_scores = scores.gather(1, torch.from_numpy(positives).long()[:, None]).numpy()
        del scores
        stats = MiningStats(queries=len(queries), requested=config.num_negatives)
        rows, sel_scores = select_negatives(
            top_s.numpy(),
            top_i.numpy(),
            config,
            positive_rows=[[int(p)] for p in positives],
            positive_floor=pos_scores[:, 0],
            stats=stats,
        )
        stats.negatives = sum(len(r) for r in rows)
        mined = MinedNegatives(rows, sel_scores, list(pos_scores), stats)
    elapsed = time.perf_counter() - start
    anon = sampler.stop()
    negatives = np.full((len(queries), config.num_negatives), -1, dtype=np.int64)
    for i, r in enumerate(mined.indices):
        negatives[i, : len(r)] = r
    np.save(directory / f"negatives-{method}-{passages}.npy", negatives)
    return {
        "method": method,
        "passages": passages,
        "queries": len(queries),
        "seconds": elapsed,
        "peak_rss_mb": status_kb("VmHWM") / 1024,
        "peak_anon_mb": anon,
        "negatives_per_query": mined.stats.negatives / len(queries),
        "threads": torch.get_num_threads(),
    }


def spawn(directory: Path, method: str, passages: int, threads: int | None) -> dict:
    return run_child(
        __file__,
        directory,
        method,
        threads,
        "--child-passages",
        str(passages),
        what=f"{method} on {passages}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--baseline-passages", type=int, default=100_000)
    parser.add_argument("--dir", default="/tmp/densetune-bench-mine")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip-large", action="store_true", help="only the baseline-size comparison")
    parser.add_argument("--child", choices=("chunked", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--child-passages", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    directory = Path(args.dir)
    if args.child:
        print(json.dumps(run_one(directory, args.child, args.child_passages, args.threads)))
        return

    t = time.perf_counter()
    generate(directory, args.passages, args.queries, args.dim, args.baseline_passages)
    print(
        f"data: {directory} ({args.passages} x {args.dim} float16, {args.queries} queries), {time.perf_counter() - t:.0f}s"
    )
    print_machine()
    rows = [spawn(directory, "naive", args.baseline_passages, args.threads)]
    rows.append(spawn(directory, "chunked", args.baseline_passages, args.threads))
    if not args.skip_large and args.passages > args.baseline_passages:
        rows.append(spawn(directory, "chunked", args.passages, args.threads))
    same = np.array_equal(
        np.load(directory / f"negatives-naive-{args.baseline_passages}.npy"),
        np.load(directory / f"negatives-chunked-{args.baseline_passages}.npy"),
    )

    print()
    header = f"{'method':<20} {'passages':>10} {'queries':>8} {'time s':>8} {'peak RSS MB':>12} {'peak anon MB':>13} {'neg/query':>10}"
    print_header(header)
    names = {"naive": "naive full matrix", "chunked": "densetune chunked"}
    for r in rows:
        print(
            f"{names[r['method']]:<20} {r['passages']:>10} {r['queries']:>8} {r['seconds']:>8.1f} "
            f"{r['peak_rss_mb']:>12.0f} {r['peak_anon_mb']:>13.0f} {r['negatives_per_query']:>10.2f}"
        )
    naive, chunked = rows[0], rows[1]
    print()
    print(
        f"at {args.baseline_passages} passages: densetune / naive time {chunked['seconds'] / naive['seconds']:.2f}x, "
        f"peak anon memory {chunked['peak_anon_mb'] / naive['peak_anon_mb']:.2f}x; same negatives: {same}"
    )
    if len(rows) > 2:
        big = rows[2]
        naive_gb = args.queries * args.passages * 4 / 1e9 + args.passages * args.dim * 4 / 1e9
        print(
            f"at {big['passages']} passages: {big['seconds']:.0f}s, peak anon {big['peak_anon_mb']:.0f} MB; "
            f"a full score matrix would need {naive_gb:.0f} GB"
        )
    print(f"load average at end {os.getloadavg()[0]:.1f}; threads {rows[0]['threads']}")


if __name__ == "__main__":
    main()
