"""Encoding throughput: densetune's corpus encoding against ``SentenceTransformer.encode``, defaults against defaults.

Both embed the first ``--passages`` SciFact abstracts (title + " " + text) with all-MiniLM-L6-v2 (or
``--model``), at most 256 tokens each, in this process, alternating ``--rounds`` times so a shared machine's
load falls on both alike. Each side runs as its user gets it without tuning: densetune as ``densetune encode``
does (``load_encoder`` with ``--precision``, default auto: bf16 weights where the CPU or GPU computes bf16
natively; its default batch of 64, longest texts first), sentence-transformers with ``encode``'s defaults
(batch 32, fp32; ``--peer-bf16`` casts its model to bf16, a tuning step its users must take themselves).
The best round of each counts; the cosine between the two sides' vectors is printed as a sanity check.

    python bench/bench_encode.py                       # CPU, 1,000 passages, 2 rounds
    python bench/bench_encode.py --device cuda --passages 20000 --peer-batch 256 --peer-bf16
    python bench/bench_encode.py --device cuda --random bert-base --passages 20000 --peer-batch 256 --peer-bf16

Prints one table with passages/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_common import (
    add_model_data_device,
    add_random_argument,
    default_model,
    print_footer,
    print_machine,
    random_model,
    scifact_missing,
    set_offline_env,
)

set_offline_env()


def read_passages(scifact: Path, n: int) -> list[str]:
    """The first ``n`` SciFact abstracts as ``title + " " + text`` (what both pipelines embed); the 5,183
    abstracts again from the start when ``n`` is larger (a GPU needs more than one corpus to time)."""
    texts = []
    with open(scifact / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts.append((row.get("title", "") + " " + row["text"]).strip())
            if len(texts) == n:
                break
    return [texts[i % len(texts)] for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_data_device(parser)
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=256, help="token limit, both sides")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="densetune's")
    parser.add_argument("--batch", type=int, default=64, help="densetune's batch (its default: 64)")
    parser.add_argument(
        "--peer-batch", type=int, default=32, help="SentenceTransformer.encode's (default 32)"
    )
    parser.add_argument("--peer-bf16", action="store_true", help="cast the peer's model to bf16")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each counts")
    add_random_argument(parser)
    parser.add_argument(
        "--random-dir", default="/tmp/densetune-bench-random", help="where --random's model is made"
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.random:
        args.model = random_model(args.random, Path(args.random_dir) / args.random)
    model_path = args.model or default_model()
    if scifact_missing(args.data):
        return 2
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from densetune.models.loaders import load_encoder

    print_machine()
    texts = read_passages(Path(args.data), args.passages)
    ours = load_encoder(model_path, device=args.device, precision=args.precision)
    peer = SentenceTransformer(model_path, device=args.device)
    peer.max_seq_length = args.max_length
    if args.peer_bf16:
        peer = peer.to(torch.bfloat16)

    def run_ours():
        return ours.encode_texts(texts, is_query=False, batch_size=args.batch, max_length=args.max_length)

    def run_peer():
        return peer.encode(texts, batch_size=args.peer_batch, convert_to_numpy=True)

    best = {"densetune": float("inf"), "peer": float("inf")}
    vectors = {}
    for _ in range(args.rounds):
        for name, fn in (("densetune", run_ours), ("peer", run_peer)):
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn()
            if args.device == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
            vectors[name] = np.asarray(out, dtype=np.float32)
    a, b = vectors["densetune"], vectors["peer"]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    rate = {k: len(texts) / v for k, v in best.items()}
    autocast = getattr(ours, "inference_precision", None)
    ours_mode = f"{autocast.name} autocast" if autocast else str(next(ours.parameters()).dtype).split(".")[-1]

    name = f"random {args.random}" if args.random else Path(model_path).name
    print(
        f"\nencode throughput: {name}, {args.device}, {len(texts)} SciFact passages, "
        f"<= {args.max_length} tokens, best of {args.rounds} alternating rounds"
    )
    print(f"{'encoder':<58}{'seconds':>10}{'passages/s':>12}")
    ours_name = f"densetune encode ({ours_mode}, batch {args.batch})"
    peer_name = (
        f"SentenceTransformer.encode ({'bf16' if args.peer_bf16 else 'fp32'}, batch {args.peer_batch})"
    )
    print(f"{ours_name:<58}{best['densetune']:>10.1f}{rate['densetune']:>12.1f}")
    print(f"{peer_name:<58}{best['peer']:>10.1f}{rate['peer']:>12.1f}")
    print(f"{'ratio densetune / sentence-transformers':<58}{rate['densetune'] / rate['peer']:>21.2f}x")
    print(f"cosine densetune vs peer vectors: min {cosine.min():.5f}, mean {cosine.mean():.5f}")
    print_footer(args.device, args.json, {"args": vars(args), "seconds": best, "passages_per_s": rate})
    return 0


if __name__ == "__main__":
    sys.exit(main())
