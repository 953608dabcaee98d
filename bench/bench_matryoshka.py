"""Matryoshka training: nDCG@10 on SciFact test at each embedding dimension, plain recipe against Matryoshka.

Both systems are densetune's SciFact recipe (``bench/bench_scifact_finetune.py``: all-MiniLM-L6-v2, hard
negatives mined once with the base model, ``--epochs`` 3, ``--negatives`` 3, batch 32, lr 2e-5, in-batch +
hard negatives, temperature 0.05), from the same mined file and seed; they differ in one setting:

- ``plain``: the contrastive loss on the whole 384-dimensional embeddings;
- ``matryoshka``: ``loss.matryoshka_dims`` = ``--dims`` (384,256,128,64): the same loss on the embeddings cut
  to each dimension and renormalised, summed (weights 1, or ``--weights``).

Each model, and the base model, is then evaluated by :func:`densetune.retrieval.evaluate.evaluate_dims` on
SciFact test (full corpus) at every dimension of ``--dims``: one encoding per model, cut and renormalised per
dimension. The table has one row per dimension: base | plain | matryoshka | matryoshka / plain (the peer
measured in the same run). ``--json`` writes the numbers, settings and machine.

    python bench/bench_matryoshka.py --device cuda --json runs/bench_matryoshka.json        # the measurement
    python bench/bench_matryoshka.py --max-steps 2 --max-corpus 300 --batch 8 --out /tmp/mrl_smoke   # smoke run

``--max-corpus N`` runs on a SciFact subset (the first N documents, the qrels that point into them and their
queries), written under ``--out``: a smoke test of the whole pipeline, not a measurement.
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
from bench_common import REPO, make_recipe, print_header, scifact_missing, set_offline_env
from bench_scifact_finetune import (
    add_recipe_arguments,
    check_recipe_arguments,
    densetune_config,
    densetune_mine,
)

set_offline_env()

METRIC = "ndcg@10"
SYSTEMS = ("base", "plain", "matryoshka")


def subset(data: Path, n_docs: int, out: Path) -> Path:
    """A BEIR folder of SciFact's first ``n_docs`` documents, the qrels judging them and their queries."""
    target = out / "data"
    if (target / "corpus.jsonl").is_file():
        return target
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    with open(data / "corpus.jsonl", encoding="utf-8") as f:
        lines = [line for _, line in zip(range(n_docs), f)]
    kept = {json.loads(line)["_id"] for line in lines}
    (target / "corpus.jsonl").write_text("".join(lines), encoding="utf-8")
    queries: set[str] = set()
    for split in ("train", "test"):
        rows = (data / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        keep = [r for r in rows[1:] if r.split("\t")[1] in kept]
        queries |= {r.split("\t")[0] for r in keep}
        (target / "qrels" / f"{split}.tsv").write_text("\n".join([rows[0], *keep]) + "\n", encoding="utf-8")
    with open(data / "queries.jsonl", encoding="utf-8") as f:
        chosen = [line for line in f if json.loads(line)["_id"] in queries]
    (target / "queries.jsonl").write_text("".join(chosen), encoding="utf-8")
    return target


def train(args: argparse.Namespace, mined: Path, out: Path, dims: list[int] | None) -> dict[str, Any]:
    """The recipe (with ``loss.matryoshka_dims`` when ``dims``) into ``out``; its model folder and facts."""
    raw = densetune_config(args, mined, out)
    raw["output"]["dir"] = str(out)
    if dims:
        raw["loss"]["matryoshka_dims"] = dims
        raw["loss"]["matryoshka_weights"] = args.weights or []
    t = time.perf_counter()
    summary = make_recipe(raw).run()
    return {
        "model": summary["model"],
        "train_s": time.perf_counter() - t,
        "steps": summary["steps"],
        "final_loss": summary["final_loss"],
    }


def evaluate(args: argparse.Namespace, model: str) -> dict[str, float]:
    """nDCG@10 on the test split at each of ``--dims``, from one encoding."""
    from densetune.retrieval.evaluate import evaluate_dims

    by_dim = evaluate_dims(
        model,
        args.data,
        "test",
        args.dims,
        metrics=[METRIC],
        max_length=args.max_len,
        device=None if args.device == "auto" else args.device,
        show_progress=False,
    )
    return {str(dim): means[METRIC] for dim, means in by_dim.items()}


def print_table(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    head = f"{'dim':>6}" + "".join(f"{name:>12}" for name in SYSTEMS) + f"{'matryoshka / plain':>20}"
    print()
    print(f"{METRIC} on {args.data} (test) at each embedding dimension")
    print_header(head)
    for dim in map(str, args.dims):
        cells = "".join(f"{results[name]['ndcg'][dim]:>12.4f}" for name in SYSTEMS)
        ratio = results["matryoshka"]["ndcg"][dim] / results["plain"]["ndcg"][dim]
        print(f"{dim:>6}{cells}{ratio:>19.3f}x")
    steps = ", ".join(f"{n} {results[n]['steps']} steps {results[n]['train_s']:.0f}s" for n in SYSTEMS[1:])
    print(f"training: {steps}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_recipe_arguments(parser)
    parser.add_argument(
        "--dims", default="384,256,128,64", help="Matryoshka dimensions, trained and evaluated"
    )
    parser.add_argument("--weights", default=None, help="one loss weight per dim (default: 1 each)")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_matryoshka"), help="work folder")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument(
        "--max-corpus", type=int, default=None, help="smoke run: a subset of the first N documents"
    )
    args = parser.parse_args(argv)
    check_recipe_arguments(parser, args)
    try:
        args.dims = sorted({int(d) for d in args.dims.split(",") if d.strip()}, reverse=True)
        args.weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    except ValueError:
        parser.error("--dims takes integers and --weights numbers, comma-separated")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if scifact_missing(args.data):
        return 2
    out = Path(args.out)
    if args.max_corpus:  # its own folder: the mining cache of the whole corpus stays valid
        out = out / f"first{args.max_corpus}"
        args.data = str(subset(Path(args.data), args.max_corpus, out))
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    mined, mining = densetune_mine(args, out)
    results: dict[str, dict[str, Any]] = {"base": {"model": args.model, "train_s": 0.0, "steps": 0}}
    for name, dims in (("plain", None), ("matryoshka", args.dims)):
        print(f"\n=== {name}: {args.epochs} epochs, {args.negatives} negatives, dims {dims or 'whole'} ===")
        results[name] = train(args, mined, out / name, dims)
    for name in SYSTEMS:
        t = time.perf_counter()
        results[name]["ndcg"] = evaluate(args, results[name]["model"])
        results[name]["eval_s"] = time.perf_counter() - t
        print(f"[{name}] {METRIC} " + ", ".join(f"{d}: {v:.4f}" for d, v in results[name]["ndcg"].items()))
    print_table(args, results)
    import torch

    machine = {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
    }
    print(
        f"{machine['device']}, {machine['cpus']} CPUs, load average {machine['load_average']:.1f} at the end"
    )
    if args.json:
        payload = {
            "measured": time.strftime("%Y-%m-%d %H:%M"),
            "args": vars(args),
            "machine": machine,
            "mining": mining,
            "results": results,
            "ratio_matryoshka_over_plain": {
                d: results["matryoshka"]["ndcg"][d] / results["plain"]["ndcg"][d]
                for d in results["plain"]["ndcg"]
            },
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
