"""Data layer at scale: 1,000,000 passages + 1,000,000 id-based examples (1 positive + 20 negatives).

Generates (in a child process, into a temporary directory) a NeMo corpus-id dataset: a corpus directory
(``merlin_metadata.json`` + ``corpus.parquet``) and ``train.json`` referencing documents by id. Then, in
this process: converts and loads it (cold), loads it again (cache hit), and iterates every example with
the positive's and negatives' texts resolved. Prints times, examples/s and peak RSS (getrusage).

    python bench/bench_data_scale.py                      # 1M / 1M / 20 negatives
    python bench/bench_data_scale.py --passages 100000 --examples 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import Clock


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def generate(root: Path, n_passages: int, n_examples: int, n_neg: int, seed: int = 0) -> None:
    """Write the corpus (Parquet, in batches) and train.json (streamed) without holding either in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    vocab = np.array(
        [f"w{i:04d}" for i in range(5000)] + ["the", "of", "and", "in", "protein", "cell", "study"]
    )
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "merlin_metadata.json").write_text(json.dumps({"class": "TextQADataset", "corpus_id": "bench"}))
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("title", pa.string())])
    with pq.ParquetWriter(corpus / "corpus.parquet", schema) as writer:
        for start in range(0, n_passages, 100_000):
            n = min(100_000, n_passages - start)
            words = vocab[rng.integers(0, len(vocab), size=(n, 40))]
            texts = [" ".join(row) for row in words.tolist()]
            ids = [f"doc-{i}" for i in range(start, start + n)]
            titles = [f"Title {i}" for i in range(start, start + n)]
            writer.write_table(pa.table({"id": ids, "text": texts, "title": titles}, schema=schema))
    with open(root / "train.json", "w") as f:
        f.write('{"corpus": [{"path": "corpus"}],\n "data": [\n')
        for start in range(0, n_examples, 100_000):
            n = min(100_000, n_examples - start)
            docs = rng.integers(0, n_passages, size=(n, 1 + n_neg)).tolist()
            lines = []
            for k, row in enumerate(docs):
                i = start + k
                record = {
                    "question_id": f"q{i}",
                    "question": f"question number {i} about w{i % 5000:04d}",
                    "corpus_id": "bench",
                    "pos_doc": [{"id": f"doc-{row[0]}"}],
                    "neg_doc": [f"doc-{d}" for d in row[1:]],
                }
                lines.append(json.dumps(record))
            f.write((",\n" if start else "") + ",\n".join(lines))
        f.write("\n]}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--negatives", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1024, help="examples decoded per store.iter batch")
    parser.add_argument("--keep", default=None, help="generate into (and keep) this directory")
    parser.add_argument("--generate-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate_only:
        generate(Path(args.generate_only), args.passages, args.examples, args.negatives)
        return

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="densetune-bench-"))
    try:
        t0 = time.perf_counter()
        if not (root / "train.json").is_file():
            cmd = [sys.executable, __file__, "--generate-only", str(root), "--passages", str(args.passages)]
            cmd += ["--examples", str(args.examples), "--negatives", str(args.negatives)]
            subprocess.run(cmd, check=True)  # a child process: its memory does not count in our peak RSS
        gen_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
        cache = root / "cache"
        shutil.rmtree(cache, ignore_errors=True)

        from densetune.data.store import load_examples

        rss_start = peak_rss_mb()
        with Clock() as cold:
            store = load_examples(root / "train.json", cache_dir=cache)
        rss_cold = peak_rss_mb()
        del store

        t0 = time.perf_counter()
        store = load_examples(root / "train.json", cache_dir=cache)
        warm_s = time.perf_counter() - t0

        n = docs = chars = 0
        with Clock() as iterate:
            for ex in store.iter(resolve=True, batch_size=args.batch_size):
                n += 1
                docs += len(ex.positives) + len(ex.negatives)
                chars += len(ex.positives[0].text) + sum(len(d.text) for d in ex.negatives)
        iter_s = iterate.wall
        assert n == len(store) == args.examples and docs == n * (1 + args.negatives) and chars > 0

        sample = np.random.default_rng(1).integers(0, len(store), size=2000).tolist()
        t0 = time.perf_counter()
        for i in sample:
            ex = store.resolve(store[i])
        random_s = (time.perf_counter() - t0) / len(sample)
        cache_mb = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**20

        rows = [
            (
                "passages / examples / docs per example",
                f"{args.passages:,} / {args.examples:,} / {1 + args.negatives}",
            ),
            ("input files on disk", f"{size_mb:,.0f} MB (generated in {gen_s:.1f} s)"),
            ("Arrow cache on disk", f"{cache_mb:,.0f} MB"),
            ("load, cold (convert + index + cache)", f"{cold.wall:.1f} s wall, {cold.cpu:.1f} s CPU"),
            ("load, cache hit", f"{warm_s:.3f} s"),
            (
                "iterate all, texts resolved",
                f"{iter_s:.1f} s wall ({iterate.cpu:.1f} s CPU) = {n / iter_s:,.0f} examples/s ({docs / iter_s:,.0f} docs/s)",
            ),
            ("random access store.resolve(store[i])", f"{random_s * 1e3:.2f} ms per example"),
            ("peak RSS before loading (imports)", f"{rss_start:,.0f} MB"),
            ("peak RSS after cold load", f"{rss_cold:,.0f} MB"),
            ("peak RSS overall", f"{peak_rss_mb():,.0f} MB"),
        ]
        width = max(len(k) for k, _ in rows)
        load = os.getloadavg()[0]
        print(f"densetune data scale benchmark ({os.cpu_count()} CPUs, load average {load:.1f} at the end)")
        for k, v in rows:
            print(f"  {k:<{width}}  {v}")
        limit = 2048
        print(
            f"  peak RSS {'<' if peak_rss_mb() < limit else '>='} {limit} MB: {'PASS' if peak_rss_mb() < limit else 'FAIL'}"
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
