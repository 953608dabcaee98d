"""The training recipe end to end: CLI, outputs, evaluation, gradient cache, and real models."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from train_helpers import (
    final_weights,
    make_beir_dir,
    make_inline_data,
    max_abs_diff,
    tiny_recipe,
    write_yaml,
)

from densetune import cli
from densetune.train import checkpoint as ckpt
from densetune.train.config import load_config
from densetune.train.logging import read_metrics
from densetune.train.loop import TrainRecipe

# Tiny-model tests run on one thread (faster, and far faster on a busy machine); real models use all cores.
tiny = pytest.mark.usefixtures("one_torch_thread")


def train(cfg_path: Path, overrides: list[str] = ()) -> tuple[TrainRecipe, dict]:
    recipe = TrainRecipe(load_config(cfg_path, list(overrides)))
    return recipe, recipe.run()


@tiny
def test_cli_names_the_bad_key_in_one_line(tiny_bert, tmp_path, capsys):
    data = make_inline_data(tmp_path / "train.jsonl", 8)
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_recipe(tiny_bert, data, tmp_path / "out"))
    assert cli.main(["train", str(cfg), "train.batch_sise=3"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.batch_sise" in err and "no such key" in err
    assert cli.main(["train", str(cfg), "+data.collator.q_max_length=3"]) == 1
    err = capsys.readouterr().err
    assert "data.collator" in err and "q_max_length" in err and "q_max_len" in err  # lists accepted arguments
    assert cli.main(["train", str(cfg), "optim.lr=0.5", "--print-config"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out


@tiny
def test_tiny_run_writes_every_output(tiny_bert, tmp_path):
    """Dev groups + a BEIR folder evaluated during training; log, curve, checkpoints, model and card."""
    data = make_inline_data(tmp_path / "train.jsonl", 16)
    dev = make_inline_data(tmp_path / "dev.jsonl", 8, seed=5)
    beir = make_beir_dir(tmp_path / "beir")
    out = tmp_path / "out"
    cfg = tiny_recipe(
        tiny_bert,
        data,
        out,
        train={"max_steps": 6, "grad_accum_steps": 2, "save_every": 2, "keep_last": 2, "log_every": 2},
        eval={
            "every": 3,
            "at_start": True,
            "at_end": True,
            "dev": [str(dev)],
            "dev_n_passages": 3,
            "beir_dir": str(beir),
        },
        output={"dir": str(out), "tensorboard": True, "plot": True, "save_model": True},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe, summary = train(write_yaml(tmp_path / "cfg.yaml", cfg))
    # the run's output carries no third-party deprecation noise (torchdata's set_vital under torch 2.13)
    assert not [w for w in caught if "set_vital" in str(w.message)]

    assert summary["steps"] == 6 and recipe.global_batch_size == 8
    records = read_metrics(out / "metrics.jsonl")
    train_records = [r for r in records if r["kind"] == "train"]
    eval_records = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train_records] == [2, 4, 6]
    assert {"loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s"} <= set(train_records[0])
    assert [r["step"] for r in eval_records] == [0, 3, 6]  # at start, every 3, at the end
    for key in ("dev_loss", "dev_acc@1", "dev_mrr", "ndcg@10", "recall@100"):
        assert all(0 <= r[key] < 100 for r in eval_records), key
    assert 0 < eval_records[-1]["dev_mrr"] <= 1
    # Samples: 8 queries per optimizer step (4 per micro-batch x 2).
    assert train_records[0]["samples_per_s"] > 0

    assert (out / "training_curve.png").stat().st_size > 1000
    assert (out / "config.yaml").is_file()
    assert load_config(out / "config.yaml") == recipe.cfg  # the resolved config reloads as it ran
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000004", "step_00000006"]
    card = (out / "model" / "README.md").read_text()
    for needle in ("global_batch_size", "dev_mrr", str(data)):
        assert needle in card, needle
    assert summary["model"] == str(out / "model") and summary["metrics"]["dev_mrr"] > 0


@tiny
def test_gradient_cache_gives_the_plain_loop_weights(tiny_bert_nodrop, tmp_path):
    data = make_inline_data(tmp_path / "train.jsonl", 16)
    plain = tiny_recipe(tiny_bert_nodrop, data, tmp_path / "plain", train={"max_steps": 3, "save_every": 0})
    cached = tiny_recipe(
        tiny_bert_nodrop, data, tmp_path / "cached", train={"max_steps": 3, "grad_cache_chunk_size": 2}
    )
    train(write_yaml(tmp_path / "plain.yaml", plain))
    train(write_yaml(tmp_path / "cached.yaml", cached))
    assert max_abs_diff(final_weights(tmp_path / "plain"), final_weights(tmp_path / "cached")) < 1e-5


def _scifact_subset(scifact_dir: Path, out: Path, cache: Path, n: int = 16) -> Path:
    """Inline JSONL from SciFact train: the cited abstract as positive, 2 other abstracts as negatives."""
    from densetune.data.beir import load_beir

    data = load_beir(scifact_dir, "train", cache_dir=cache)
    ids = list(data.corpus.ids)
    rows = []
    for qid in sorted(data.qrels)[:n]:
        pos = next(iter(data.qrels[qid]))
        negs = [ids[(hash(qid) + 97 * k) % len(ids)] for k in range(1, 3)]
        text = lambda d: data.corpus.get(d).text  # noqa: E731
        rows.append({"query": data.queries[qid], "pos_doc": text(pos), "neg_doc": [text(d) for d in negs]})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


@pytest.mark.slow
def test_minilm_on_scifact_loss_falls_and_model_loads_in_sentence_transformers(
    minilm_path, scifact_dir, tmp_path
):
    data = _scifact_subset(scifact_dir, tmp_path / "scifact16.jsonl", tmp_path / "cache")
    out = tmp_path / "out"
    cfg = tiny_recipe(
        minilm_path,
        data,
        out,
        data={
            "train": [str(data)],
            "cache_dir": str(tmp_path / "cache"),
            "selector": {"n_passages": 3, "negative": "first"},
            "collator": {"q_max_len": 32, "p_max_len": 64},
        },
        optim={"lr": 1e-4, "warmup_steps": 1},
        train={"batch_size": 8, "max_steps": 4, "log_every": 2},
        eval={"dev": [str(data)], "dev_n_passages": 3, "at_start": True, "at_end": True},
        output={"dir": str(out), "save_model": True, "tensorboard": False, "plot": False},
    )
    recipe, summary = train(write_yaml(tmp_path / "cfg.yaml", cfg))
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals[-1]["dev_loss"] < evals[0]["dev_loss"] * 0.9, evals

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out / "model"), device="cpu")
    texts = ["aspirin lowers the risk of heart attack", "CRISPR edits genes"]
    ours = recipe.raw_model.encode_texts(texts, is_query=False)
    theirs = torch.as_tensor(st.encode(texts, convert_to_numpy=True))
    assert theirs.shape == (2, 384)
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.slow
def test_smollm2_lora_trains_and_merged_export_reloads(smollm2_dir, tmp_path):
    # smollm2_dir is the GGUF dequantised once per session by densetune's GGUF loader (tests/conftest.py)
    from densetune.models.biencoder import BiEncoder

    data = make_inline_data(tmp_path / "train.jsonl", 8, n_negatives=2)
    out = tmp_path / "out"
    cfg = tiny_recipe(
        smollm2_dir,
        data,
        out,
        model={
            "path": smollm2_dir,
            "pooling": "last",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        },
        optim={"lr": 1e-3, "warmup_steps": 0, "weight_decay": 0.0},
        train={"batch_size": 2, "max_steps": 2, "save_every": 0},
        output={"dir": str(out), "save_model": True, "tensorboard": False, "plot": False},
    )
    cfg["data"]["collator"].update({"q_max_len": 16, "p_max_len": 24})
    recipe, _ = train(write_yaml(tmp_path / "cfg.yaml", cfg))
    n_train, n_all = recipe.param_counts
    assert 0 < n_train < n_all / 100  # adapters only
    weights = final_weights(out)
    assert weights and all("lora" in name for name in weights)  # checkpoints hold the adapters only

    texts = ["what is a protein", "a gene encodes a protein"]
    trained = recipe.raw_model.encode_texts(texts, is_query=True)
    reloaded = BiEncoder.from_pretrained(str(out / "model"))  # merged: a plain transformers folder
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    assert torch.allclose(reloaded.encode_texts(texts, is_query=True), trained, atol=2e-4)
