"""Cross-encoder rerankers through the training recipe: listwise / distillation losses, dev and rerank
evaluation, exact resume, export that sentence-transformers scores alike, config errors; real MiniLM and
SmolLM2 (LoRA) runs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from train_helpers import (
    final_weights,
    make_beir_dir,
    make_inline_data,
    max_abs_diff,
    run_recipe,
    tiny_recipe,
    write_yaml,
)

from densetune import cli
from densetune.data.trec import write_run
from densetune.errors import ConfigError
from densetune.models.crossencoder import CrossEncoder
from densetune.train.config import from_dict, load_config, merge_defaults
from densetune.train.logging import read_metrics

LOADER = "densetune.models.crossencoder.CrossEncoder.from_pretrained"
tiny = pytest.mark.usefixtures("one_torch_thread")


def reranker_recipe(model_path: str, train_file: Path, out: Path, **sections) -> dict:
    """The tiny bi-encoder recipe turned into a cross-encoder one: the CrossEncoder loader, the model's own
    collator, the reranker loss."""
    cfg = tiny_recipe(model_path, train_file, out, **sections)
    cfg["model"] = {"_target_": LOADER, "path": model_path, "kwargs": {"max_length": 64}}
    cfg["data"]["collator"] = None
    cfg["loss"] = {"reranker": {"listwise_weight": 1.0}, **sections.get("loss", {})}
    return cfg


def first_stage_run(beir: Path, path: Path, n_queries: int = 12, depth: int = 20) -> Path:
    """A run over make_beir_dir's data: each query's relevant doc at a random rank of the top ``depth``."""
    rng = random.Random(3)
    run = {}
    for i in range(n_queries):
        docs = [f"doc{j}" for j in range(depth) if j != i]
        docs.insert(rng.randrange(depth), f"doc{i}")
        run[f"q{i}"] = {d: float(depth - r) for r, d in enumerate(docs)}
    write_run(run, path)
    return path


def scored_data(path: Path, n_records: int, seed: int = 0) -> Path:
    """FlagEmbedding rows with teacher scores: {query, pos, neg, pos_scores, neg_scores}."""
    base = make_inline_data(path.with_suffix(".nemo.jsonl"), n_records, n_negatives=3, seed=seed)
    rng = random.Random(seed)
    with open(base, encoding="utf-8") as src, open(path, "w", encoding="utf-8") as out:
        for line in src:
            row = json.loads(line)
            negs = row["neg_doc"]
            out.write(
                json.dumps(
                    {
                        "query": row["query"],
                        "pos": [row["pos_doc"]],
                        "neg": negs,
                        "pos_scores": [4.0],
                        "neg_scores": [round(rng.uniform(-3, 2), 3) for _ in negs],
                    }
                )
                + "\n"
            )
    return path


@tiny
def test_tiny_reranker_trains_evaluates_and_exports_for_sentence_transformers(tiny_bert_nodrop, tmp_path):
    data = make_inline_data(tmp_path / "train.jsonl", 16)
    dev = make_inline_data(tmp_path / "dev.jsonl", 8, seed=5)
    beir = make_beir_dir(tmp_path / "beir")
    run = first_stage_run(beir, tmp_path / "first.run")
    out = tmp_path / "out"
    cfg = reranker_recipe(tiny_bert_nodrop, data, out)
    cfg["eval"] = {
        "dev": [str(dev)],
        "dev_n_passages": 3,
        "beir_dir": str(beir),
        "rerank_run": str(run),
        "rerank_top_k": 10,
        "every": 4,
        "at_start": True,
    }
    cfg["output"].update(save_model=True)
    recipe = run_recipe(from_dict(merge_defaults(cfg)))
    assert recipe.step.kind == "cross-encoder"

    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 4, 8]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    for key in ("dev_loss", "dev_acc@1", "dev_mrr", "ndcg@10", "mrr@10", "recall@100"):
        assert key in evals[-1], key
    # 16 groups of 3 rows per step-pair of batches: samples count queries, not rows
    assert train[0]["samples_per_s"] > 0 and train[0]["tokens_per_s"] > train[0]["samples_per_s"]
    # Recall@100 of a top-10 rerank of a 20-deep run is the run's own recall: every relevant doc is there.
    assert evals[-1]["recall@100"] == pytest.approx(1.0)

    from sentence_transformers import CrossEncoder as STCrossEncoder

    model_dir = out / "model"
    ours = CrossEncoder.from_pretrained(model_dir)
    pairs = [("protein cell", "cell protein gene"), ("virus dose", "trial mouse blood liver")]
    expected = ours.score_pairs([q for q, _ in pairs], [p for _, p in pairs])
    got = STCrossEncoder(str(model_dir), device="cpu").predict(pairs, convert_to_tensor=True).cpu()
    torch.testing.assert_close(got.float(), expected, atol=1e-5, rtol=1e-5)
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "listwise_weight" in card and "ndcg@10" in card


@tiny
def test_tiny_reranker_resumes_exactly(tiny_bert, tmp_path):
    """Dropout on, random negatives: a run killed after step 3 and resumed ends on the uninterrupted weights."""
    data = make_inline_data(tmp_path / "train.jsonl", 24, n_negatives=5)
    base = reranker_recipe(tiny_bert, data, tmp_path / "unused", train={"max_steps": 8, "save_every": 3})
    cfg = write_yaml(tmp_path / "cfg.yaml", base)
    run_recipe(load_config(cfg, [f"output.dir={tmp_path / 'full'}"]))
    killed = run_recipe(load_config(cfg, [f"output.dir={tmp_path / 'killed'}"]), kill_at=3)
    assert killed.state.step == 3
    run_recipe(load_config(cfg, [f"output.dir={tmp_path / 'killed'}", "resume=auto"]))
    assert max_abs_diff(final_weights(tmp_path / "killed"), final_weights(tmp_path / "full")) < 1e-6


@tiny
def test_distillation_only_reranker_learns_the_teacher_margins(tiny_bert_nodrop, tmp_path):
    """MarginMSE from teacher scores alone: the loss falls well below where it starts."""
    data = scored_data(tmp_path / "scored.jsonl", 16)
    cfg = reranker_recipe(
        tiny_bert_nodrop,
        data,
        tmp_path / "out",
        train={"max_steps": 24, "log_every": 4},
        data={"selector": {"n_passages": 4, "positive": "first", "negative": "first"}},
    )
    cfg["loss"] = {"reranker": {"listwise_weight": 0.0, "distillation": "margin_mse"}}
    cfg["optim"]["lr"] = 3e-3
    run_recipe(from_dict(merge_defaults(cfg)))
    losses = [r["loss"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if r["kind"] == "train"]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize(
    "change, key",
    [
        ({"loss": {"distillation": {"_target_": "densetune.losses.DistillationLoss"}}}, "loss.distillation"),
        ({"data": {"collator": {"_target_": "densetune.data.collators.BiEncoderCollator"}}}, "data.collator"),
        ({"train": {"grad_cache_chunk_size": 4}}, "train.grad_cache_chunk_size"),
        ({"eval": {"beir_dir": "somewhere"}}, "eval.rerank_run"),
        ({"loss": {"reranker": None}}, "loss.reranker"),
    ],
)
def test_options_of_the_other_model_kind_are_named_errors(tiny_bert_nodrop, tmp_path, change, key):
    cfg = reranker_recipe(tiny_bert_nodrop, tmp_path / "train.jsonl", tmp_path / "out")
    for section, values in change.items():
        cfg[section].update(values)
    with pytest.raises(ConfigError) as err:
        from_dict(merge_defaults(cfg))
    assert err.value.key == key


def test_bi_encoder_needs_a_collator_node(tiny_bert_nodrop, tmp_path):
    cfg = tiny_recipe(tiny_bert_nodrop, tmp_path / "train.jsonl", tmp_path / "out")
    cfg["data"]["collator"] = None
    with pytest.raises(ConfigError, match="collator node"):
        from_dict(merge_defaults(cfg))


def test_reranker_configs_validate(capsys):
    for name in ("minilm_reranker.yaml",):
        assert cli.main(["train", str(Path("configs") / name), "--check"]) == 0, capsys.readouterr().err


def scifact_groups(scifact: Path, path: Path, n_queries: int, n_negatives: int, seed: int = 0) -> Path:
    """NeMo inline groups from SciFact train: the judged document and random corpus documents as negatives."""
    from densetune.data.beir import load_beir
    from densetune.data.corpus import doc_text

    data = load_beir(scifact, "train")
    rng = random.Random(seed)
    n_docs = len(data.corpus)
    with open(path, "w", encoding="utf-8") as f:
        for qid in sorted(data.qrels)[:n_queries]:
            pos = int(data.corpus.rows([next(iter(data.qrels[qid]))])[0])
            negs = [r for r in rng.sample(range(n_docs), n_negatives + 1) if r != pos][:n_negatives]
            texts = [doc_text(d) for d in data.corpus.docs([pos, *negs])]
            f.write(
                json.dumps({"query": data.queries[qid], "pos_doc": texts[0], "neg_doc": texts[1:]}) + "\n"
            )
    return path


def test_minilm_reranker_learns_scifact_groups(minilm_path, scifact_dir, tmp_path):
    """The real MiniLM as a cross-encoder (fresh head): a few steps lift dev accuracy on SciFact groups."""
    data = scifact_groups(scifact_dir, tmp_path / "train.jsonl", 32, 3)
    out = tmp_path / "out"
    cfg = reranker_recipe(
        minilm_path,
        data,
        out,
        train={"max_steps": 6, "batch_size": 8, "log_every": 1},
        data={"selector": {"n_passages": 4, "positive": "first", "negative": "first"}},
    )
    cfg["model"]["kwargs"] = {"max_length": 96}
    cfg["optim"] = {"lr": 1e-4, "warmup_steps": 1}
    cfg["eval"] = {"dev": [str(data)], "dev_n_passages": 4, "at_start": True, "batch_size": 16}
    cfg["output"].update(save_model=True)
    run_recipe(from_dict(merge_defaults(cfg)))
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals[-1]["dev_loss"] < evals[0]["dev_loss"] and evals[-1]["dev_acc@1"] > evals[0]["dev_acc@1"]
    assert (out / "model" / "config_sentence_transformers.json").is_file()


def test_smollm2_lora_reranker_trains_through_the_recipe(smollm2_dir, tmp_path):
    """The decoder "Yes"-logit reranker with LoRA: two steps change the adapters; the merged export reloads
    and scores like the trained model."""
    data = make_inline_data(tmp_path / "train.jsonl", 4, n_negatives=2)
    out = tmp_path / "out"
    cfg = reranker_recipe(smollm2_dir, data, out, train={"max_steps": 2, "batch_size": 2, "log_every": 1})
    cfg["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    cfg["model"]["kwargs"] = {"max_length": 48}
    cfg["data"]["selector"] = {"n_passages": 2}
    cfg["output"].update(save_model=True)
    recipe = run_recipe(from_dict(merge_defaults(cfg)))
    assert recipe.raw_model.kind == "decoder"
    assert all("lora_" in name for name in recipe.trainable_names)
    queries, passages = ["protein cell"], ["cell protein gene signal"]
    trained = recipe.raw_model.score_pairs(queries, passages)
    reloaded = CrossEncoder.from_pretrained(out / "model").score_pairs(queries, passages)
    torch.testing.assert_close(reloaded, trained, atol=1e-3, rtol=1e-3)
