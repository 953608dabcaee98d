"""Benchmark: ``densetune mine`` against sentence-transformers' ``util.mine_hard_negatives``, same run.

Data (generated once into ``--dir``): a text corpus of ``--passages`` short passages about ``--topics``
topics, and ``--queries`` training queries, each with one positive passage of its topic (a BEIR directory
with a ``train`` split). Both systems use the default model (all-MiniLM-L6-v2), the same selection rules
(``--negatives`` hardest from the top 100, relative margin 0.05, hardest first) and their own defaults
otherwise (batch sizes, precision, search).

Rows, each in a fresh process (peak memory is its own):

- ``end to end``: encode corpus and queries, retrieve, select, write. densetune: the ``mine`` command
  with ``--corpus-embeddings`` (encoded there); the peer: ``mine_hard_negatives(..., cache_folder=DIR)``
  (which caches its embeddings there).
- ``from embeddings``: the same call again, the corpus embeddings now on disk (densetune reuses
  ``doc.npy``; the peer reads its cache); ``--repeats`` times (default 2), the systems alternating.

Times start in the child before its first import (densetune's command module; the peer's ``datasets`` and
``sentence_transformers``), so each includes what a user's process spends importing.

Reported: wall time, CPU time (user + system, whole process), peak RSS (VmHWM) and peak anonymous memory,
negatives per query, the ratios peer / densetune of wall and of CPU time (> 1: densetune faster), and how
many queries each kept (the peer's n-tuple output leaves out a query that got fewer negatives than asked;
densetune keeps it with what it got).

Usage:
    python bench/bench_mine_peer.py                          # 100k passages, 10k queries
    python bench/bench_mine_peer.py --passages 20000 --queries 2000
    python bench/bench_mine_peer.py --from-embeddings-only --repeats 3   # again, from the saved embeddings
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path

from bench_common import PeakAnon, default_model, print_header, print_machine, run_child, set_offline_env

WORDS = (
    "protein cell gene tumour virus immune brain heart sleep memory insulin diet vitamin bone muscle "
    "blood liver lung kidney skin enzyme hormone receptor signal pathway mutation therapy vaccine trial "
    "dose risk patient infection bacteria antibiotic inflammation metabolism obesity diabetes cancer"
).split()
RULES = {"negatives": 15, "range_max": 100, "relative_margin": 0.05}


def generate(directory: Path, passages: int, queries: int, topics: int, seed: int = 0) -> Path:
    """A BEIR directory of generated text (reused when its settings match)."""
    beir = directory / "beir"
    meta = {"passages": passages, "queries": queries, "topics": topics, "seed": seed}
    stamp = beir / "bench.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == meta:
        return beir
    shutil.rmtree(beir, ignore_errors=True)
    (beir / "qrels").mkdir(parents=True)
    rng = random.Random(seed)
    vocab = [[rng.choice(WORDS) for _ in range(6)] for _ in range(topics)]
    with open(beir / "corpus.jsonl", "w") as f:
        for i in range(passages):
            words = vocab[i % topics] + rng.sample(WORDS, 10)
            rng.shuffle(words)
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(words)}) + "\n")
    with open(beir / "queries.jsonl", "w") as fq, open(beir / "qrels" / "train.tsv", "w") as fr:
        fr.write("query-id\tcorpus-id\tscore\n")
        for i in range(queries):
            doc = rng.randrange(passages)
            words = rng.sample(vocab[doc % topics], 4) + rng.sample(WORDS, 2)
            fq.write(json.dumps({"_id": f"q{i}", "text": "what about " + " ".join(words)}) + "\n")
            fr.write(f"q{i}\td{doc}\t1\n")
    stamp.write_text(json.dumps(meta))
    return beir


# ------------------------------------------------------------------------------------------------ children


def child_densetune(directory: Path, model: str) -> dict:
    peak = PeakAnon()
    start = time.perf_counter()  # imports included, as for the peer
    from densetune.cli import main as cli

    beir = directory / "beir"
    out = directory / "densetune_mined.jsonl"
    rc = cli(
        ["mine", "--model", model, "--data", str(beir), "--out", str(out), "--overwrite",
         "--corpus-embeddings", str(directory / "densetune_emb"),
         "--num-negatives", str(RULES["negatives"]), "--range-max", str(RULES["range_max"]),
         "--relative-margin", str(RULES["relative_margin"])]
    )  # fmt: skip
    wall = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"densetune mine exited {rc}")
    rows = [json.loads(line) for line in open(out)]
    return {
        "wall": wall,
        "cpu": _cpu_s(),
        "anon_mb": peak.stop(),
        "hwm_mb": _hwm_mb(),
        "negatives": sum(len(r["neg"]) for r in rows) / max(len(rows), 1),
        "queries": len(rows),
    }


def child_peer(directory: Path, model: str) -> dict:
    peak = PeakAnon()
    start = time.perf_counter()  # imports included, as for densetune
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from densetune.data.beir import load_beir

    corpus, pairs = peer_inputs(load_beir(directory / "beir", "train"))
    dataset = Dataset.from_dict({"query": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
    st = SentenceTransformer(model, device="cpu")
    mined = mine_hard_negatives(
        dataset,
        st,
        corpus=corpus,
        num_negatives=RULES["negatives"],
        range_max=RULES["range_max"],
        relative_margin=RULES["relative_margin"],
        output_format="n-tuple",
        cache_folder=str(directory / "peer_cache"),
        verbose=False,
    )
    wall = time.perf_counter() - start
    negs = [c for c in mined.column_names if c.startswith("negative")]
    return {
        "wall": wall,
        "cpu": _cpu_s(),
        "anon_mb": peak.stop(),
        "hwm_mb": _hwm_mb(),
        "negatives": len(negs),
        "queries": len(mined),
    }


def peer_inputs(data) -> tuple[list[str], list[tuple[str, str]]]:
    """The peer's corpus (passage texts) and (query, positive text) pairs, from the loaded BEIR data."""
    corpus = [d.text for d in data.corpus]
    text_of = dict(zip(data.corpus.ids, corpus))
    pairs = [
        (data.queries[q], text_of[d]) for q, docs in data.qrels.items() for d, rel in docs.items() if rel > 0
    ]
    return corpus, pairs


def fill_peer_cache(directory: Path, model: str) -> None:
    """Write the peer's cache files (named as ``mine_hard_negatives`` names them: a hash of the model name and
    the de-duplicated texts) from densetune's saved embeddings, so the from-embeddings rows run both systems
    on the same vectors without the peer encoding the corpus first."""
    import hashlib

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from densetune.data.beir import load_beir
    from densetune.data.formats import iter_examples
    from densetune.retrieval.embeddings import load_embeddings

    data = load_beir(directory / "beir", "train")
    corpus, pairs = peer_inputs(data)
    emb = directory / "densetune_emb"
    doc_ids, docs = load_embeddings(emb, "doc")
    row_of_id = {d: i for i, d in enumerate(doc_ids)}
    row_of_text: dict[str, int] = {}
    for doc_id, text in zip(data.corpus.ids, corpus):
        row_of_text.setdefault(text, row_of_id[doc_id])
    texts = list(dict.fromkeys(corpus + [p for _, p in pairs]))  # the peer's de-duplicated corpus
    queries = list(dict.fromkeys(q for q, _ in pairs))
    query_row: dict[str, int] = {}
    for i, ex in enumerate(iter_examples(directory / "beir", split="train")):  # mine_query.npy's rows
        query_row.setdefault(ex.query, i)
    query_emb = load_embeddings(emb, "mine_query")[1]
    name = SentenceTransformer(model, device="cpu").model_card_data.base_model or ""
    cache = directory / "peer_cache"
    cache.mkdir(exist_ok=True)
    for kind, items, array in (
        ("query", queries, query_emb[[query_row[q] for q in queries]]),
        ("corpus", texts, docs[[row_of_text[t] for t in texts]]),
    ):
        digest = hashlib.sha256(repr((name, None, None, items)).encode(), usedforsecurity=False).hexdigest()
        np.save(cache / f"{kind}_embeddings_{digest}.npy", np.asarray(array, dtype=np.float32))


def _cpu_s() -> float:
    """User + system CPU seconds of this process so far (all threads; on a shared machine the steadier
    measure: wall time there also counts waiting for the cores)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _hwm_mb() -> float:
    from bench_common import status_kb

    return status_kb("VmHWM") / 1024


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", default="runs/bench_mine_peer", help="data and outputs (reused)")
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--topics", type=int, default=2_000)
    parser.add_argument("--model", default=None, help="default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--child", choices=("densetune", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="from-embeddings runs per system")
    parser.add_argument(
        "--peer-cache-from-densetune",
        action="store_true",
        help="with --from-embeddings-only: fill the peer's cache from densetune's saved embeddings (both then "
        "mine from the same vectors; the peer's own encode of the corpus is not needed)",
    )
    parser.add_argument(
        "--from-embeddings-only",
        action="store_true",
        help="skip the end-to-end rows and reuse the embeddings an earlier run left in --dir",
    )
    args = parser.parse_args()
    set_offline_env()
    directory = Path(args.dir)
    model = args.model or default_model()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.child:
        result = (child_densetune if args.child == "densetune" else child_peer)(directory, model)
        print(json.dumps(result))
        return

    print_machine()
    generate(directory, args.passages, args.queries, args.topics)
    if not args.from_embeddings_only:
        for stale in ("densetune_emb", "peer_cache"):
            shutil.rmtree(directory / stale, ignore_errors=True)
    elif args.peer_cache_from_densetune:
        shutil.rmtree(directory / "peer_cache", ignore_errors=True)
        fill_peer_cache(directory, model)
        print("the peer's cache: densetune's saved embeddings (the same vectors for both)")
    elif not ((directory / "densetune_emb" / "doc.npy").is_file() and (directory / "peer_cache").is_dir()):
        raise SystemExit(
            f"no embeddings of an earlier run in {directory}; run without --from-embeddings-only"
        )
    print(f"{args.passages:,} passages, {args.queries:,} queries, model {Path(model).name}, rules {RULES}")
    phases = ([] if args.from_embeddings_only else ["end to end"]) + [
        "from embeddings" + (f" #{i + 1}" if args.repeats > 1 else "") for i in range(args.repeats)
    ]
    results = {}
    for phase in phases:
        for system in ("densetune", "peer"):
            results[phase, system] = run_child(
                __file__, directory, system, args.threads, "--model", model, what=f"{system} ({phase})"
            )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print_header(
        f"{'phase':<19} {'system':<22} {'time':>9} {'CPU':>8} {'peak RSS':>10} {'peak anon':>10} "
        f"{'queries':>8} {'neg/query':>9} {'speed-up':>8} {'CPU ratio':>9}"
    )
    for phase in phases:
        ours = results[phase, "densetune"]
        for system, name in (("densetune", "densetune mine"), ("peer", "ST mine_hard_negatives")):
            r = results[phase, system]
            print(
                f"{phase:<19} {name:<22} {r['wall']:>8.1f}s {r['cpu']:>7.1f}s {r['hwm_mb']:>8.0f}MB "
                f"{r['anon_mb']:>8.0f}MB {r['queries']:>8} {r['negatives']:>9.2f} "
                f"{r['wall'] / ours['wall']:>7.2f}x {r['cpu'] / ours['cpu']:>8.2f}x"
            )


if __name__ == "__main__":
    main()
