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

``--select-weights "1,1,1,1;4,1,1,1;8,1,1,1"`` first chooses ``--weights`` on a dev split carved from train
(``--dev-fraction`` of the train queries, seeded; test is not read): each candidate and the plain recipe are
trained on the rest of train and evaluated on dev, and the candidate kept is the one with the best dev nDCG@10
at full width among those whose 128-dimension nDCG@10 beats the base model's full width on dev (the issue's two
goals); the test run then uses it. ``--json`` also records the dev table.

    python bench/bench_matryoshka.py --device cuda --select-weights "1,1,1,1;2,1,1,1;4,1,1,1;8,1,1,1"

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


def dev_split(data: Path, fraction: float, seed: int, out: Path) -> Path:
    """A BEIR folder whose ``train`` qrels are SciFact train minus a seeded ``fraction`` of its queries and whose
    ``dev`` qrels are those queries (corpus and queries linked, no test qrels): where settings are chosen."""
    import random

    target = out / f"dev{fraction}_seed{seed}"
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        link = target / name
        if not link.exists():
            link.symlink_to((data / name).resolve())
    rows = (data / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()
    queries = sorted({row.split("\t")[0] for row in rows[1:]})
    held = set(random.Random(seed).sample(queries, round(len(queries) * fraction)))
    for split, keep in (("train", lambda q: q not in held), ("dev", lambda q: q in held)):
        kept = [row for row in rows[1:] if keep(row.split("\t")[0])]
        (target / "qrels" / f"{split}.tsv").write_text("\n".join([rows[0], *kept]) + "\n", encoding="utf-8")
    print(f"dev split: {len(held)} of {len(queries)} train queries held out, in {target}")
    return target


def choose_weights(args: argparse.Namespace, out: Path) -> tuple[list[float], dict[str, Any]]:
    """Train the plain recipe and every ``--select-weights`` candidate on the dev split's train part; keep the
    candidate with the best full-width dev nDCG@10 whose 128-dim dev nDCG@10 beats the base model's full width."""
    test_data, args.data = args.data, str(dev_split(Path(args.data), args.dev_fraction, args.seed, out))
    full, small = args.dims[0], 128 if 128 in args.dims else args.dims[-1]
    try:
        mined, _ = densetune_mine(args, out)
        rows: dict[str, dict[str, float]] = {"base": evaluate(args, args.model, "dev")}
        rows["plain"] = evaluate(args, train(args, mined, out / "plain", None)["model"], "dev")
        for weights in args.select_weights:
            args.weights = weights
            name = ",".join(f"{w:g}" for w in weights)
            print(f"\n=== dev: matryoshka weights {name} ===")
            rows[name] = evaluate(args, train(args, mined, out / f"w{name}", args.dims)["model"], "dev")
    finally:
        args.data = test_data
    print(f"\n{METRIC} on the dev split at each embedding dimension")
    print_header(f"{'model':>16}" + "".join(f"{d:>10}" for d in args.dims))
    for name, row in rows.items():
        print(f"{name:>16}" + "".join(f"{row[str(d)]:>10.4f}" for d in args.dims))
    floor = rows["base"][str(full)]
    eligible = [w for w in args.select_weights if rows[",".join(f"{x:g}" for x in w)][str(small)] > floor]
    pool = eligible or args.select_weights
    chosen = max(pool, key=lambda w: rows[",".join(f"{x:g}" for x in w)][str(full)])
    print(f"chosen weights {chosen}: best dev {METRIC} at {full} dims"
          + (f" among those beating the base model's {floor:.4f} at {small} dims" if eligible else
             f" (none beat the base model's {floor:.4f} at {small} dims)"))  # fmt: skip
    return chosen, {"fraction": args.dev_fraction, "rows": rows, "chosen": chosen}


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


def evaluate(args: argparse.Namespace, model: str, split: str = "test") -> dict[str, float]:
    """nDCG@10 on ``split`` at each of ``--dims``, from one encoding."""
    from densetune.retrieval.evaluate import evaluate_dims

    by_dim = evaluate_dims(
        model,
        args.data,
        split,
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
    parser.add_argument(
        "--select-weights",
        default=None,
        help="';'-separated candidate --weights, chosen on a dev split carved from train before the test run",
    )
    parser.add_argument("--dev-fraction", type=float, default=0.2, help="train queries held out as dev")
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
        args.select_weights = (
            [[float(w) for w in c.split(",")] for c in args.select_weights.split(";") if c.strip()]
            if args.select_weights
            else None
        )
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
    selection = None
    if args.select_weights:
        args.weights, selection = choose_weights(args, out / "select")
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
            "selection": selection,
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
