"""Benchmark: NoDuplicatesBatchSampler against a plain per-batch Python-set sampler.

Synthetic data shaped like a hard-negative triplet file (MS MARCO "triplet-hard" style, where the slowness
of sentence-transformers' sampler was reported, PR #3611): each query has ``--rows-per-query`` rows; every
row has 8 keys: the query text and the positive id (both shared by the query's rows) and six negative ids,
drawn 90% uniformly over the corpus and 10% from a small set of popular documents. So in-batch clashes are
frequent, and late in the epoch a batch must look deep into the remaining pool to find compatible rows.

Compared, on the same keys and batch size:
- densetune's sampler with Python string keys (encoded to integer codes once), with the same keys as an
  Arrow list<string> column (how an Arrow example store holds them), and with a 2-D int64 array of ids;
- the plain algorithm of sentence-transformers' classic NoDuplicatesBatchSampler: for each batch, walk the
  remaining examples in shuffled order, build the set of the example's texts, skip it if it meets the
  batch's set. It reads keys from a Python list (no dataset row access), which flatters it: the real
  sampler reads every scanned row from the dataset. ``--sentence-transformers`` also times the installed
  sentence-transformers sampler on a ``datasets.Dataset`` of the same rows.

Usage:
    python bench/bench_samplers.py                          # 1,000,000 x 8 keys, batch 8192
    python bench/bench_samplers.py --num-examples 200000 --sentence-transformers
"""

from __future__ import annotations

import argparse
from collections.abc import Hashable, Sequence

import numpy as np
import pyarrow as pa
from bench_common import Clock

from densetune.data.samplers import NoDuplicatesBatchSampler


def make_keys(
    num_examples: int, rows_per_query: int, corpus_size: int, hot_docs: int, num_negatives: int, seed: int
) -> tuple[list[tuple], np.ndarray]:
    """Per-example keys, as string tuples (query text, positive id, negative ids...) and as int64 ids."""
    rng = np.random.default_rng(seed)
    num_queries = -(-num_examples // rows_per_query)
    query = np.repeat(np.arange(num_queries), rows_per_query)[:num_examples]
    positive = rng.integers(corpus_size, size=num_queries)[query]
    negatives = rng.integers(corpus_size, size=(num_examples, num_negatives))
    hot = rng.random((num_examples, num_negatives)) < 0.1
    negatives[hot] = rng.integers(hot_docs, size=int(hot.sum()))
    ids = np.column_stack([query + corpus_size, positive, negatives]).astype(np.int64)
    doc_names = [f"doc-{j:08d}" for j in range(corpus_size)]
    query_texts = [f"what is the answer to question number {q}?" for q in range(num_queries)]
    columns = [[query_texts[q] for q in query.tolist()], [doc_names[j] for j in positive.tolist()]]
    columns += [[doc_names[j] for j in negatives[:, c].tolist()] for c in range(num_negatives)]
    return list(zip(*columns)), ids


def naive_no_duplicates(
    keys: Sequence[Sequence[Hashable]], batch_size: int, seed: int, drop_last: bool = False
) -> list[list[int]]:
    """The plain per-batch scan with Python sets (sentence-transformers' classic algorithm)."""
    order = np.random.default_rng(seed).permutation(len(keys)).tolist()
    remaining = dict.fromkeys(order)
    batches = []
    while remaining:
        batch_values: set = set()
        batch: list[int] = []
        for index in remaining:
            values = set(keys[index])
            if values & batch_values:
                continue
            batch.append(index)
            if len(batch) == batch_size:
                batches.append(batch)
                break
            batch_values |= values
        else:
            if not drop_last:
                batches.append(batch)
        for index in batch:
            del remaining[index]
    return batches


def check_no_duplicates(keys: Sequence[Sequence[Hashable]], batches: list[list[int]]) -> None:
    for batch in batches:
        seen: set = set()
        for index in batch:
            values = set(keys[index])
            assert not values & seen, "duplicate key inside a batch"
            seen |= values


def describe(batches: list[list[int]], batch_size: int) -> tuple[int, int, int]:
    full = sum(len(b) == batch_size for b in batches)
    return len(batches), full, sum(len(b) for b in batches if len(b) != batch_size)


def time_sentence_transformers(keys: list[tuple], batch_size: int, precompute: bool) -> tuple[Clock, list]:
    import datasets
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler as STSampler

    columns = {f"k{c}": [row[c] for row in keys] for c in range(len(keys[0]))}
    dataset = datasets.Dataset.from_dict(columns)
    with Clock() as clock:
        sampler = STSampler(dataset, batch_size, drop_last=False, seed=0, precompute_hashes=precompute)
        batches = list(sampler)
    return clock, batches


def time_densetune(keys, batch_size: int, seed: int) -> tuple[Clock, Clock, Clock, list[list[int]]]:
    """Clocks of (construct, epoch 0, epoch 1) and the epoch 0 batches; an epoch runs len() + every batch."""
    with Clock() as construct:
        sampler = NoDuplicatesBatchSampler(keys, batch_size, seed=seed)
    with Clock() as first:
        count = len(sampler)
        batches = list(sampler)
    assert count == len(batches), "len() differs from the batches yielded"
    sampler.set_epoch(1)
    with Clock() as second:
        assert len(sampler) == len(list(sampler))
    return construct, first, second, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-examples", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--rows-per-query", type=int, default=16)
    parser.add_argument("--corpus-size", type=int, default=2_000_000)
    parser.add_argument("--hot-docs", type=int, default=20_000)
    parser.add_argument("--negatives", type=int, default=6, help="negatives per example (keys = 2 + this)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--sentence-transformers", action="store_true", help="also time the installed ST sampler"
    )
    args = parser.parse_args()

    with Clock() as clock:
        keys, ids = make_keys(
            args.num_examples, args.rows_per_query, args.corpus_size, args.hot_docs, args.negatives, args.seed
        )
    print(
        f"data: {len(keys):,} examples x {len(keys[0])} keys ({args.rows_per_query} rows per query), "
        f"batch {args.batch_size}; built in {clock.wall:.1f} s",
        flush=True,
    )

    none = Clock()
    none.wall = none.cpu = 0.0
    rows: list[tuple] = []  # (method, construct clock, epoch 0 clock, epoch 1 clock or None, batches)

    def done(row: tuple) -> None:
        rows.append(row)
        name, construct, epoch0 = row[:3]
        print(
            f"  {name}: {construct.wall + epoch0.wall:.2f} s wall, {construct.cpu + epoch0.cpu:.2f} s CPU",
            flush=True,
        )

    construct, first, second, ours = time_densetune(keys, args.batch_size, args.seed)
    check_no_duplicates(keys, ours)
    assert sorted(i for b in ours for i in b) == list(range(len(keys))), "densetune lost or repeated examples"
    done(("densetune, string keys", construct, first, second, ours))
    column = pa.array(keys, type=pa.list_(pa.string()))  # as an Arrow example store holds it
    construct, first, second, ours_arrow = time_densetune(column, args.batch_size, args.seed)
    assert ours_arrow == ours, "an Arrow column and Python string keys gave different batches"
    done(("densetune, Arrow list<string> column", construct, first, second, ours_arrow))
    del column
    construct, first, second, ours_ids = time_densetune(ids, args.batch_size, args.seed)
    assert ours_ids == ours, "int64 ids and string keys gave different batches"
    done(("densetune, int64 id array", construct, first, second, ours_ids))

    if not args.skip_baseline:
        with Clock() as clock:
            naive = naive_no_duplicates(keys, args.batch_size, args.seed)
        check_no_duplicates(keys, naive)
        done(("naive per-batch Python sets", none, clock, None, naive))

    if args.sentence_transformers:
        for precompute in (False, True):
            try:
                clock, batches = time_sentence_transformers(keys, args.batch_size, precompute)
            except ImportError as err:
                print(f"sentence-transformers (precompute_hashes={precompute}) skipped: {err}")
                continue
            name = f"sentence-transformers {'hashed' if precompute else 'plain'}"
            done((name, none, clock, None, batches))

    naive_row = next((row for row in rows if row[0].startswith("naive")), rows[0])
    base_wall, base_cpu = naive_row[1].wall + naive_row[2].wall, naive_row[1].cpu + naive_row[2].cpu
    print()
    header = (
        f"| {'method':<36} | {'construct':>14} | {'epoch 0':>14} | {'epoch 1':>14} | {'total':>14} | "
        f"{'speed-up vs naive':>17} | {'batches':>7} | {'full':>4} | {'in smaller':>10} |"
    )
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")

    def cell(wall: float, cpu: float) -> str:
        return f"{wall:6.2f} / {cpu:5.2f}"

    for name, construct, epoch0, epoch1, batches in rows:
        wall, cpu = construct.wall + epoch0.wall, construct.cpu + epoch0.cpu
        count, full, smaller = describe(batches, args.batch_size)
        again = cell(epoch1.wall, epoch1.cpu) if epoch1 else f"{'-':>14}"
        ratio = f"{base_wall / wall:.2f}x / {base_cpu / cpu:.2f}x"
        print(
            f"| {name:<36} | {cell(construct.wall, construct.cpu)} | {cell(epoch0.wall, epoch0.cpu)} | {again} | "
            f"{cell(wall, cpu)} | {ratio:>17} | {count:>7} | {full:>4} | {smaller:>10} |"
        )
    print(
        "\ncells: wall-clock s / CPU s. construct = key conversion (once per run); epoch = len() + every batch "
        "(densetune packs in len(); the naive and sentence-transformers samplers pay their whole cost every "
        "epoch); total = construct + epoch 0; speed-up = naive total / this total."
    )


if __name__ == "__main__":
    main()
