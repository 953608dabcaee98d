"""Matryoshka training end to end: the recipe's checks, and a real MiniLM run whose saved folder truncates alike
in sentence-transformers (``truncate_dim``) and in ``densetune encode --dim``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_helpers import make_inline_data, tiny_recipe, write_yaml

from densetune import cli
from densetune.losses import MatryoshkaLoss
from densetune.models.matryoshka import trained_dims
from densetune.retrieval.embeddings import load_embeddings, read_meta
from densetune.train.config import from_dict, merge_defaults
from densetune.train.loop import TrainRecipe


def _config(tmp_path, model_path, **loss):
    data = make_inline_data(tmp_path / "train.jsonl", 8)
    return tiny_recipe(
        model_path, data, tmp_path / "out", loss={"contrastive": {"temperature": 0.05}, **loss}
    )


def test_dims_are_sorted_with_their_weights(tiny_bert, tmp_path):
    raw = _config(tmp_path, tiny_bert, matryoshka_dims=[8, 32, 16], matryoshka_weights=[0.5, 1.0, 2.0])
    cfg = from_dict(merge_defaults(raw))
    assert cfg.loss.matryoshka_dims == [32, 16, 8] and cfg.loss.matryoshka_weights == [1.0, 2.0, 0.5]


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("loss.matryoshka_dims=[64,64]", "loss.matryoshka_dims: expected distinct dimensions"),
        ("loss.matryoshka_dims=[16,0]", "loss.matryoshka_dims: expected positive integers"),
        ("loss.matryoshka_weights=[1.0]", "loss.matryoshka_dims: expected a non-empty list"),
        # the width is known once the model is loaded: the tiny BERT has 32 dimensions
        ("loss.matryoshka_dims=[64,16]", "64 exceeds the model's embedding dimension 32"),
    ],
)
def test_cli_refuses_bad_dims_in_one_line(tiny_bert, tmp_path, capsys, override, words):
    cfg = write_yaml(tmp_path / "cfg.yaml", _config(tmp_path, tiny_bert))
    assert cli.main(["train", str(cfg), override]) == 1
    err = capsys.readouterr().err.strip()
    assert words in err and err.count("\n") == 0, err


@pytest.mark.slow
def test_minilm_matryoshka_run_saves_dims_that_sentence_transformers_truncates_alike(
    minilm_path, tmp_path, capsys
):
    """Two steps through the gradient cache; the folder records the dims (densetune_config.json, model card)
    and ``SentenceTransformer(path, truncate_dim=128)`` gives ``densetune encode --dim 128``'s vectors."""
    dims = [384, 256, 128, 64]
    cfg = _config(tmp_path, minilm_path, matryoshka_dims=dims)
    cfg["train"].update({"max_steps": 2, "batch_size": 4, "grad_cache_chunk_size": 2})
    cfg["output"]["save_model"] = True
    recipe = TrainRecipe(from_dict(merge_defaults(cfg)))
    summary = recipe.run()
    assert isinstance(recipe.step.objective, MatryoshkaLoss) and recipe.step.objective.dims == dims
    assert np.isfinite(summary["final_loss"])
    model_dir = tmp_path / "out" / "model"
    assert trained_dims(model_dir) == dims
    assert json.loads((model_dir / "densetune_config.json").read_text())["matryoshka_dims"] == dims
    card = (model_dir / "README.md").read_text()
    assert "| Matryoshka dimensions | 384, 256, 128, 64:" in card and "truncate_dim=64" in card
    assert "matryoshka_dims" in card  # the loss section

    corpus = tmp_path / "docs.jsonl"
    texts = ["aspirin lowers the risk of heart attack", "CRISPR edits genes", "the sea is deep"]
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "enc128"
    args = ["encode", "--model", str(model_dir), "--corpus", str(corpus), "--out", str(out)]
    assert cli.main([*args, "--precision", "fp32", "--dim", "128"]) == 0
    _, ours = load_embeddings(out, "doc")
    assert ours.shape == (3, 128) and read_meta(out, "doc")["truncate_dim"] == 128

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", truncate_dim=128)
    raw = st.encode(texts, convert_to_numpy=True, prompt_name="document")
    unit = st.encode(texts, convert_to_numpy=True, prompt_name="document", normalize_embeddings=True)
    assert raw.shape == (3, 128)
    np.testing.assert_allclose(np.asarray(ours), unit, atol=1e-5)
    # without normalize_embeddings sentence-transformers keeps the cut's norm, but its cosine ranks alike
    cosine = st.similarity(torch.as_tensor(raw), torch.as_tensor(raw)).numpy()
    np.testing.assert_allclose(cosine, ours @ ours.T, atol=1e-5)
