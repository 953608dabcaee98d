"""Training throughput: densetune's recipe against sentence-transformers' trainer, same data, same batch.

Both train all-MiniLM-L6-v2 (or ``--model``) contrastively on SciFact queries, each with its cited abstract
and ``--negatives`` hard negatives (other abstracts, seeded), ``--batch`` queries per step, queries <=
``--q-len`` and passages <= ``--p-len`` tokens. densetune runs its own recipe (``densetune train``'s code
path: StatefulDataLoader, collator, BiEncoder, ContrastiveLoss, AdamW); sentence-transformers runs
``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss`` (scale 20 = temperature 0.05) on
(anchor, positive, negative_1..k) columns. Steps after ``--warmup`` are timed; the peer's tokens/s uses
the real (non-padding) token count per sample measured on densetune's batches (same texts, same limits).
Defaults against defaults: densetune with ``train.precision`` ``--precision`` (default auto: bf16 autocast
where the device computes bf16 natively), the peer with its trainer's default fp32 (``--peer-bf16`` turns
on its ``bf16`` training argument, a tuning step its users must take themselves).

    python bench/bench_train.py                                   # CPU, 32 x (1+3), q 64 / p 256
    python bench/bench_train.py --device cuda --batch 64 --negatives 7 --peer-bf16 --steps 20
    python bench/bench_train.py --device cuda --batch 64 --negatives 7 --peer-bf16 --random bert-base

Prints one table with samples/s, tokens/s and steps/s for both, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from bench_common import (
    add_model_data_device,
    add_random_argument,
    default_model,
    non_embedding_params,
    peak_flops,
    print_footer,
    random_model,
    scifact_missing,
    set_offline_env,
    st_training_api,
)

set_offline_env()


def build_rows(scifact: Path, n_rows: int, negatives: int, seed: int) -> list[dict]:
    """SciFact train queries with their first cited abstract and ``negatives`` random other abstracts."""
    queries = {}
    with open(scifact / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            queries[row["_id"]] = row["text"]
    corpus = {}
    with open(scifact / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            corpus[row["_id"]] = (row.get("title", "") + " " + row["text"]).strip()
    pairs = []
    with open(scifact / "qrels" / "train.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            qid, did, _ = line.strip().split("\t")
            if qid in queries and did in corpus and all(p[0] != qid for p in pairs):
                pairs.append((qid, did))
    rng = random.Random(seed)
    doc_ids = sorted(corpus)
    rows = []
    while len(rows) < n_rows:  # cycle the ~800 queries when more rows are needed
        for qid, did in pairs:
            negs = [d for d in rng.sample(doc_ids, negatives + 1) if d != did][:negatives]
            rows.append({"query": queries[qid], "pos_doc": corpus[did], "neg_doc": [corpus[d] for d in negs]})
            if len(rows) == n_rows:
                break
    return rows


def write_rows(args: argparse.Namespace, work: Path) -> tuple[list[dict], Path]:
    """The benchmark's rows (``--batch`` x all steps) and the JSONL file densetune trains on, in ``work``."""
    rows = build_rows(Path(args.data), args.batch * (args.warmup + args.steps), args.negatives, seed=0)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows, data


def densetune_overrides(args: argparse.Namespace, data: Path, work: Path) -> list[str]:
    """The densetune recipe of this benchmark, as ``densetune train`` overrides."""
    steps = args.warmup + args.steps
    return [
        f"model.path={args.model}",
        f"data.train=[{data}]",
        f"data.cache_dir={work / 'cache'}",
        f"data.selector.n_passages={1 + args.negatives}",
        "data.selector.negative=first",
        f"data.collator.q_max_len={args.q_len}",
        f"data.collator.p_max_len={args.p_len}",
        *([f"data.num_workers={args.workers}"] if args.workers is not None else []),
        "loss.contrastive.temperature=0.05",
        f"train.batch_size={args.batch}",
        f"train.max_steps={steps}",
        f"train.device={args.device}",
        f"train.precision={args.precision}",
        "train.save_every=0",
        "train.log_every=1",
        "train.progress_bar=false",
        "optim.warmup_steps=0",
        "eval.at_end=false",
        f"output.dir={work / 'densetune'}",
        "output.save_model=false",
        "output.plot=false",
        "output.tensorboard=false",
    ]


def bench_densetune(args: argparse.Namespace, data: Path, work: Path) -> dict:
    """Run the densetune recipe; time steps after the warm-up from its per-step metrics log."""
    from densetune.train.config import load_config
    from densetune.train.logging import read_metrics
    from densetune.train.loop import TrainRecipe

    recipe = TrainRecipe(load_config(None, densetune_overrides(args, data, work)))
    recipe.save_checkpoint = lambda: None  # a benchmark writes no checkpoints
    reset_peak_memory(args.device)
    try:
        recipe.setup()
        recipe.train()
    finally:
        recipe.cleanup()
    records = [r for r in read_metrics(work / "densetune" / "metrics.jsonl") if r["kind"] == "train"]
    timed = [r for r in records if r["step"] > args.warmup]
    args.densetune_precision = recipe.precision.name
    seconds = timed[-1]["time"] - records[args.warmup - 1]["time"]
    samples = args.batch * len(timed)
    tokens_per_sample = sum(r["tokens_per_s"] / r["samples_per_s"] for r in timed) / len(timed)
    return {
        "steps_per_s": len(timed) / seconds,
        "samples_per_s": samples / seconds,
        "tokens_per_s": samples * tokens_per_sample / seconds,
        "tokens_per_sample": tokens_per_sample,
        "final_loss": records[-1]["loss"],
        "peak_memory_gib": peak_memory_gib(args.device),
    }


def bench_sentence_transformers(args: argparse.Namespace, rows: list[dict], work: Path) -> dict:
    """SentenceTransformerTrainer + MultipleNegativesRankingLoss on the same rows; steps timed by a callback."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from transformers import TrainerCallback

    losses, _ = st_training_api()

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ARG002
            if args_.device == "cuda":
                import torch

                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    args_ = args
    columns = {"anchor": [r["query"] for r in rows], "positive": [r["pos_doc"] for r in rows]}
    for k in range(args.negatives):
        columns[f"negative_{k + 1}"] = [r["neg_doc"][k] for r in rows]
    model = SentenceTransformer(args.model, device=args.device)
    model.max_seq_length = args.p_len
    timer = Timer()
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(work / "st"),
        per_device_train_batch_size=args.batch,
        max_steps=args.warmup + args.steps,
        learning_rate=2e-5,
        warmup_steps=0,
        bf16=args.peer_bf16,
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        dataloader_drop_last=True,
        dataloader_num_workers=args.workers or 0,
        seed=42,
        use_cpu=args.device == "cpu",
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=targs,
        train_dataset=Dataset.from_dict(columns),
        loss=losses.MultipleNegativesRankingLoss(model, scale=20.0),
        callbacks=[timer],
    )
    reset_peak_memory(args.device)
    trainer.train()
    seconds = timer.times[-1] - timer.times[args.warmup - 1]
    return {
        "steps_per_s": args.steps / seconds,
        "samples_per_s": args.steps * args.batch / seconds,
        "peak_memory_gib": peak_memory_gib(args.device),
    }


def reset_peak_memory(device: str) -> None:
    """Start a fresh peak of the CUDA caching allocator (a CPU run reports none)."""
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> float | None:
    """Peak GPU memory allocated since :func:`reset_peak_memory`, GiB; None on a CPU."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_data_device(parser)
    parser.add_argument("--batch", type=int, default=32, help="queries per step")
    parser.add_argument("--negatives", type=int, default=3, help="hard negatives per query")
    parser.add_argument("--q-len", type=int, default=64)
    parser.add_argument("--p-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument(
        "--precision", default="auto", choices=("auto", "bf16", "fp32"), help="densetune's train.precision"
    )
    parser.add_argument("--peer-bf16", action="store_true", help="the peer's bf16 training argument")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers, both trainers (default: each one's own: densetune's auto, 0 on a CPU and one "
        "per spare core on CUDA; the peer's 0)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: all cores; 1 on a busy machine)",
    )
    add_random_argument(parser)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense bf16 peak for MFU (default: by GPU name)",
    )
    parser.add_argument("--skip-peer", action="store_true", help="densetune only")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step's time includes start-up)")
    if scifact_missing(args.data):
        return 2
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.random:
            args.model = random_model(args.random, work / f"random-{args.random}")
        elif args.model is None:
            args.model = default_model()
        params = non_embedding_params(args.model)
        rows, data = write_rows(args, work)
        ours = bench_densetune(args, data, work)
        peer = None if args.skip_peer else bench_sentence_transformers(args, rows, work)
    if peer is not None:
        peer["tokens_per_s"] = peer["samples_per_s"] * ours["tokens_per_sample"]
    # model FLOPs utilisation on real (non-padding) tokens: 6 N FLOPs per token for forward + backward
    # (N = non-embedding parameters; attention's sequence-length term left out, so MFU is a lower bound)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(args.device)
    for side in (ours, peer):
        if side is not None:
            side["mfu"] = 6 * params * side["tokens_per_s"] / peak if peak else None

    name = f"random {args.random}" if args.random else Path(args.model).name
    print(
        f"\ntraining throughput: {name}, {args.device}, {args.batch} x (1+{args.negatives}), "
        f"q {args.q_len} / p {args.p_len}, {args.steps} timed steps"
    )
    print(f"{'trainer':<40}{'steps/s':>10}{'samples/s':>12}{'tokens/s':>12}{'MFU':>8}{'peak GiB':>10}")

    def cells(side: dict) -> str:
        mfu = f"{side['mfu']:>8.1%}" if side.get("mfu") is not None else f"{'-':>8}"
        mem = f"{side['peak_memory_gib']:>10.1f}" if side.get("peak_memory_gib") is not None else f"{'-':>10}"
        return f"{side['steps_per_s']:>10.3f}{side['samples_per_s']:>12.1f}{side['tokens_per_s']:>12.0f}{mfu}{mem}"

    print(f"{f'densetune recipe ({args.densetune_precision})':<40}{cells(ours)}")
    if peer is not None:
        print(
            f"{'sentence-transformers MNRL (' + ('bf16' if args.peer_bf16 else 'fp32') + ')':<40}{cells(peer)}"
        )
        print(
            f"{'ratio densetune / sentence-transformers':<40}{ours['steps_per_s'] / peer['steps_per_s']:>10.2f}x"
        )
    print(f"real tokens per sample (query + {1 + args.negatives} passages): {ours['tokens_per_sample']:.0f}")
    print(
        f"non-embedding parameters: {params / 1e6:.1f}M"
        + (f"; MFU against {peak / 1e12:.0f} TFLOP/s" if peak else "")
    )
    print_footer(args.device, args.json, {"args": vars(args), "densetune": ours, "peer": peer})
    return 0


if __name__ == "__main__":
    sys.exit(main())
