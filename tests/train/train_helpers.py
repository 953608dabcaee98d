"""Helpers for the training tests: a tiny random BERT (real MiniLM tokenizer), small inline data, recipes."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml
from tiny_models import save_tiny_bert

WORDS = (
    "protein cell gene cancer virus vaccine brain heart drug dose trial mouse blood liver immune "
    "signal receptor enzyme tumor risk therapy infection insulin sleep diet bone muscle lung skin"
).split()


def make_tiny_bert(out: Path, tokenizer_dir: str, dropout: float) -> str:
    """A 2-layer, hidden-32 random BERT saved with the MiniLM tokenizer (seeded: the same every time)."""
    return save_tiny_bert(out, tokenizer_dir, dropout=dropout, head="none")


def make_inline_data(path: Path, n_records: int, n_negatives: int = 4, seed: int = 0) -> Path:
    """NeMo inline JSONL: ``{"query", "pos_doc", "neg_doc": [...]}`` with random word texts."""
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_records):
            record = {
                "query": f"q{i} " + text(rng.randint(3, 8)),
                "pos_doc": f"d{i} " + text(rng.randint(8, 20)),
                "neg_doc": [f"n{i}.{j} " + text(rng.randint(8, 20)) for j in range(n_negatives)],
            }
            f.write(json.dumps(record) + "\n")
    return path


def tiny_recipe(
    model_path: str, train_file: Path, out_dir: Path, **sections: dict[str, Any]
) -> dict[str, Any]:
    """A CPU recipe for the tiny model; ``sections`` update the matching config sections."""
    cfg: dict[str, Any] = {
        "seed": 7,
        "model": {"path": model_path, "pooling": "mean", "normalize": True},
        "data": {
            "train": [str(train_file)],
            "cache_dir": str(Path(train_file).parent / "cache"),
            "selector": {"n_passages": 3, "positive": "first", "negative": "random"},
            "sampler": {"_target_": "densetune.data.samplers.RandomBatchSampler"},
            "collator": {"q_max_len": 16, "p_max_len": 32, "pad_to_multiple_of": None},
        },
        "loss": {"contrastive": {"temperature": 0.05}},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "scheduler": "linear"},
        "train": {
            "batch_size": 4,
            "max_steps": 8,
            "precision": "fp32",
            "device": "cpu",
            "save_every": 0,
            "log_every": 2,
            "progress_bar": False,
        },
        "eval": {"at_end": False},
        "output": {"dir": str(out_dir), "tensorboard": False, "plot": False, "save_model": False},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            cfg[name].update(values)
        else:
            cfg[name] = values
    return cfg


def write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def final_weights(out: Path) -> dict[str, Any]:
    """The trainable tensors of the newest checkpoint under ``out``."""
    from densetune.train import checkpoint as ckpt

    path = ckpt.latest_checkpoint(out / "checkpoints")
    assert path is not None, f"no checkpoint in {out}"
    return ckpt.load_checkpoint(path)[1]


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def make_beir_dir(directory: Path, n_queries: int = 12, n_docs: int = 40, seed: int = 1) -> Path:
    """A small BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv): query i is about doc i."""
    rng = random.Random(seed)
    (directory / "qrels").mkdir(parents=True, exist_ok=True)
    with open(directory / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i in range(n_docs):
            text = " ".join(rng.choice(WORDS) for _ in range(12))
            f.write(json.dumps({"_id": f"doc{i}", "title": f"title {i}", "text": text}) + "\n")
    with open(directory / "queries.jsonl", "w", encoding="utf-8") as f:
        for i in range(n_queries):
            f.write(
                json.dumps({"_id": f"q{i}", "text": " ".join(rng.choice(WORDS) for _ in range(4))}) + "\n"
            )
    with open(directory / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for i in range(n_queries):
            f.write(f"q{i}\tdoc{i}\t1\n")
    return directory


class Killed(Exception):
    """Stands in for the process dying right after a checkpoint was written."""


def run_recipe(cfg: Any, kill_at: int | None = None) -> Any:
    """Set up, train and finish a recipe (a RecipeConfig); with ``kill_at``, die right after the checkpoint
    of that step (the run's state then is what a killed process leaves on disk)."""
    from densetune.train.loop import TrainRecipe

    recipe = TrainRecipe(cfg)
    recipe.setup()
    if kill_at is not None:
        save = recipe.save_checkpoint

        def save_then_die():
            path = save()
            if recipe.state.step == kill_at:
                raise Killed
            return path

        recipe.save_checkpoint = save_then_die
    try:
        recipe.train()
        recipe.finish()
    except Killed:
        pass
    finally:
        recipe.cleanup()
    return recipe
