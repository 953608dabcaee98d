"""A trained model encodes a long query alike in sentence-transformers, in densetune, and in training's evaluation."""

from __future__ import annotations

import pytest
import torch
from train_helpers import make_inline_data, tiny_recipe, write_yaml

from densetune.models.biencoder import BiEncoder
from densetune.train.config import load_config
from densetune.train.loop import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LONG_QUERY = " ".join(f"protein{i % 17} binds receptor{i % 5} in cells" for i in range(24))  # 120 words


def test_long_query_same_in_sentence_transformers_densetune_and_training(tmp_path, minilm_path):
    st = pytest.importorskip("sentence_transformers")
    train = make_inline_data(tmp_path / "train.jsonl", 4, n_negatives=1)
    cfg = tiny_recipe(
        minilm_path,
        train,
        tmp_path / "out",
        data={
            "selector": {"n_passages": 2, "positive": "first", "negative": "first"},
            "collator": {"q_max_len": 16, "p_max_len": 48, "pad_to_multiple_of": None},
        },
        train={"batch_size": 2, "max_steps": 1},
        output={"save_model": True},
    )
    recipe = TrainRecipe(load_config(write_yaml(tmp_path / "r.yaml", cfg), []))
    recipe.setup()
    recipe.train()
    in_training = recipe.raw_model.encode_texts([LONG_QUERY], is_query=True)  # what evaluation reports
    recipe.finish()
    recipe.cleanup()
    folder = tmp_path / "out" / "model"

    ours = BiEncoder.from_pretrained(folder).encode_texts([LONG_QUERY], is_query=True)
    theirs = st.SentenceTransformer(str(folder), device="cpu").encode(
        [LONG_QUERY], prompt_name="query", convert_to_tensor=True
    )
    assert torch.nn.functional.cosine_similarity(ours, theirs.cpu().float()).item() > 0.9999
    torch.testing.assert_close(in_training, ours, atol=1e-5, rtol=0)
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "48 for queries and passages alike, in densetune and in sentence-transformers" in card
