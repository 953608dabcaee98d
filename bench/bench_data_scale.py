"""Data at scale: validate, first start (builds the cache) and cached start at 1M and 10M examples.

Generates NeMo inline JSONL (one record a line, 1 positive + 3 negatives, ~1.9 KB a line; positives unique,
negatives drawn from a pool of 1M passages, as mined negatives recur) or, with ``--format corpus-id``, a
corpus of ``--passages`` passages and examples by id (1 positive + 20 negatives). For each size, each step runs
in a fresh process (its memory is its own) and reports wall and CPU seconds (its own and its worker processes'),
peak heap (RssAnon, sampled) and peak RSS (VmHWM, which also counts the file pages it mapped):

- ``validate``: ``densetune validate FILE``'s pass (validate_paths);
- ``first start``: ``load_examples`` (builds the Arrow cache) + ``RetrievalTrainDataset`` with the shipped
  inline recipe's selector (n_passages 4, negative random: it can drop, so the prefilter runs) + the batch
  sampler + the first batch of 16 groups with texts, i.e. the data path of ``densetune train``'s start; the
  cache build inside it (``load_examples``) is also timed alone, with its rate in examples a minute;
- ``cached start``: the same in a new process, the cache present.

Generated files go under ``--root`` and are deleted after each size (``--keep`` keeps them). Then the 10M / 1M
ratios. Check the disk first: 10M inline examples are ~19 GB of JSONL plus ~17 GB of cache.

    python bench/bench_data_scale.py --sizes 1000000 10000000 --root /work/tmp-scale
    python bench/bench_data_scale.py --sizes 100000            # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench_common import Clock, PeakAnon, status_kb


def generate_inline(path: Path, n: int, seed: int = 0, pool: int = 1_000_000, block: int = 1_000_000) -> None:
    """NeMo inline JSONL, streamed: ~440-character passages built from 4096 random word sequences.

    Beyond ``block`` records, block ``b`` is a copy of the first with ``b-`` put before every query's and
    passage's number (so queries and positives stay unique and each block draws its negatives from its own
    pool): bytes.replace writes 10M records in minutes where json.dumps takes half an hour on a busy machine.
    """
    if n > block:
        generate_inline(path, block, seed, pool, block)
        with open(path, "ab") as out:
            for b in range(1, -(-n // block)):
                rows = min(block, n - b * block)
                with open(path, "rb") as src:
                    while rows > 0:
                        lines = src.readlines(64 << 20)[:rows]
                        rows -= len(lines)
                        piece = b"".join(lines)
                        piece = piece.replace(b'"question number ', b'"question number %d-' % b)
                        out.write(piece.replace(b'"passage ', b'"passage %d-' % b))
        return
    rng = np.random.default_rng(seed)
    vocab = np.array(
        [f"w{i:04d}" for i in range(5000)] + ["the", "of", "and", "in", "protein", "cell", "study"]
    )
    base = [" ".join(r) for r in vocab[rng.integers(0, len(vocab), size=(4096, 72))].tolist()]
    with open(path, "w") as f:
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            pick = rng.integers(0, len(base), size=m)
            negs = rng.integers(0, pool, size=(m, 3))
            lines = []
            for k in range(m):
                i = start + k
                record = {
                    "query": f"question number {i} about w{i % 5000:04d}",
                    "pos_doc": f"passage {i}: " + base[pick[k]],
                    "neg_doc": [f"passage n{d}: " + base[d % len(base)] for d in negs[k].tolist()],
                }
                lines.append(json.dumps(record))
            f.write("\n".join(lines) + "\n")


def generate_corpus_id(root: Path, n_passages: int, n_examples: int, n_neg: int, seed: int = 0) -> None:
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


def children_cpu() -> float:
    """CPU seconds of this process's ended children (the cache build's worker processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child(step: str, data: Path, cache: Path) -> dict:
    """One step in this process; its measurements as a dict (CPU: this process and its workers)."""
    peak = PeakAnon(every=0.2)
    build: dict = {}
    workers_before = children_cpu()
    with Clock() as clock:
        if step == "validate":
            from densetune.validate import validate_paths

            report = validate_paths([data], cache_dir=cache)
            assert report.ok, report.render(max_problems=5)
            n = report.examples
        else:
            from densetune.data.dataset import RetrievalTrainDataset
            from densetune.data.groups import GroupSelector
            from densetune.data.samplers import RandomBatchSampler
            from densetune.data.store import load_examples

            with Clock() as load:
                store = load_examples([data], cache_dir=cache)
            build = {"load_wall": load.wall, "load_cpu": load.cpu + children_cpu() - workers_before}
            dataset = RetrievalTrainDataset(
                store, GroupSelector(4, positive="first", negative="random", seed=42)
            )
            sampler = RandomBatchSampler(num_examples=len(dataset), batch_size=16, seed=42)
            groups = dataset.__getitems__(next(iter(sampler)))
            assert len(groups) == 16 and all(len(g.docs) == 4 and g.docs[0].text for g in groups)
            n = len(dataset)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "n": n,
        "wall": clock.wall,
        "cpu": clock.cpu + children_cpu() - workers_before,
        "heap_mb": peak.stop(),
        "rss_mb": status_kb("VmHWM") / 1024,
        "worker_rss_mb": workers.ru_maxrss / 1024,  # the largest worker's peak RSS (0: none ran)
        **build,
    }


def run_step(step: str, data: Path, cache: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", step, "--data", str(data), "--cache", str(cache)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DENSETUNE_PROGRESS": "0"})
    if out.returncode != 0:
        raise SystemExit(f"{step} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(n: int, args: argparse.Namespace) -> dict:
    root = Path(args.root) / f"scale-{n}"
    data = root / ("train.jsonl" if args.format == "inline" else "train.json")
    if not (args.reuse and data.is_file()):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    shutil.rmtree(root / "cache", ignore_errors=True)
    try:
        with Clock() as gen:
            if data.is_file():
                pass  # --reuse
            elif args.format == "inline":
                generate_inline(data, n)
            else:
                generate_corpus_id(root, args.passages or n, n, 20)
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        result = {"n": n, "input_mb": size / 2**20, "generate_s": gen.wall}
        steps = ["validate", "first start"]
        if args.parallel:  # both at once: on a shared machine, two processes get twice the CPU share
            with ThreadPoolExecutor(2) as pool:
                done = dict(
                    zip(steps, pool.map(lambda s: run_step(s.split()[0], data, root / "cache"), steps))
                )
            steps = []
            for step in ("validate", "first start"):
                result[step] = done[step]
                print(f"  {n:,} {step}: {json.dumps(result[step])}", flush=True)
        for step in (*steps, "cached start"):
            result[step] = run_step(step.split()[0], data, root / "cache")
            print(f"  {n:,} {step}: {json.dumps(result[step])}", flush=True)
        result["cache_mb"] = sum(p.stat().st_size for p in (root / "cache").rglob("*") if p.is_file()) / 2**20
        return result
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(root, ignore_errors=True)


def report(results: list[dict]) -> None:
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    sizes = " | ".join(f"{r['n']:,}" for r in results)
    ratio = len(results) > 1
    print(f"| measure | {sizes} |" + (" ratio |" if ratio else ""))
    print("|---|" + "---|" * len(results) + ("---|" if ratio else ""))

    def row(label: str, values: list[float], fmt: str) -> None:
        cells = " | ".join(fmt.format(v) for v in values)
        extra = f" {values[-1] / values[0]:.1f}x |" if ratio and values[0] else (" |" if ratio else "")
        print(f"| {label} | {cells} |{extra}")

    row("input JSONL (MB)", [r["input_mb"] for r in results], "{:,.0f}")
    row("cache (MB)", [r["cache_mb"] for r in results], "{:,.0f}")
    for step in ("validate", "first start", "cached start"):
        row(f"{step}: wall s", [r[step]["wall"] for r in results], "{:,.1f}")
        row(f"{step}: CPU s", [r[step]["cpu"] for r in results], "{:,.1f}")
        if step == "first start":
            first = [r[step] for r in results]
            row("  of which the cache build: wall s", [f["load_wall"] for f in first], "{:,.1f}")
            row("  of which the cache build: CPU s", [f["load_cpu"] for f in first], "{:,.1f}")
            row(
                "  build rate: examples / min (wall)",
                [60 * f["n"] / f["load_wall"] for f in first],
                "{:,.0f}",
            )
            row("  build rate: examples / CPU-min", [60 * f["n"] / f["load_cpu"] for f in first], "{:,.0f}")
            row("  largest worker's peak RSS (MB)", [f["worker_rss_mb"] for f in first], "{:,.0f}")
        row(f"{step}: peak heap (MB)", [r[step]["heap_mb"] for r in results], "{:,.0f}")
        row(f"{step}: peak RSS (MB)", [r[step]["rss_mb"] for r in results], "{:,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--format", choices=("inline", "corpus-id"), default="inline")
    parser.add_argument(
        "--passages", type=int, default=0, help="corpus-id: corpus size (default: as examples)"
    )
    parser.add_argument("--root", default="/work/tmp-scale", help="where the generated data and cache go")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and cache")
    parser.add_argument("--reuse", action="store_true", help="use the data already under --root (kept)")
    parser.add_argument(
        "--parallel", action="store_true", help="run validate and the first start at the same time"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.data), Path(args.cache))))
        return
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    results = []
    for n in args.sizes:
        results.append(measure(n, args))
        report(results)


if __name__ == "__main__":
    main()
