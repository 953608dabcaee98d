"""Real models: MiniLM equals sentence-transformers before and after export; SmolLM2 (GGUF) LoRA round trip."""

from __future__ import annotations

import pytest
import torch

from densetune.models.biencoder import ICL_SPECIAL_TOKENS, BiEncoder

QUERIES = ["what is dense retrieval?", "who wrote hamlet"]
DOCS = [
    "Dense retrieval encodes queries and passages into vectors and searches by inner product.",
    "Hamlet is a tragedy written by William Shakespeare around 1600.",
    "short",
    "Photosynthesis converts light energy into chemical energy in plants. " * 40,  # past 256 tokens
]


def _sentence_transformer(path):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(path), device="cpu")


@pytest.mark.slow
def test_minilm_equals_sentence_transformers(minilm_path):
    model = BiEncoder.from_pretrained(minilm_path)
    assert (model.config.pooling, model.config.normalize, model.config.max_passage_len) == ("mean", True, 256)
    reference = _sentence_transformer(minilm_path).encode(DOCS, convert_to_tensor=True)
    torch.testing.assert_close(
        model.encode_texts(DOCS, is_query=False, batch_size=3), reference, atol=1e-5, rtol=0
    )


@pytest.mark.slow
def test_minilm_export_loads_in_sentence_transformers_and_transformers(minilm_path, tmp_path):
    model = BiEncoder.from_pretrained(minilm_path, query_prefix="query:", passage_prefix="passage:")
    with torch.no_grad():  # a "fine-tuned" model: the export must carry the changed weights
        model.encoder.encoder.layer[0].output.dense.weight.mul_(1.1)
    q = model.encode_texts(QUERIES, is_query=True)
    d = model.encode_texts(DOCS, is_query=False)
    model.save_pretrained(tmp_path / "out", model_card={"hyperparameters": {"lr": 2e-5, "batch_size": 32}})

    st = _sentence_transformer(tmp_path / "out")
    assert st.prompts["query"] == "query: " and st.prompts["document"] == "passage: "
    torch.testing.assert_close(
        st.encode(QUERIES, prompt_name="query", convert_to_tensor=True), q, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        st.encode(DOCS, prompt_name="document", convert_to_tensor=True), d, atol=1e-5, rtol=0
    )

    from transformers import AutoModel, AutoTokenizer

    plain = AutoModel.from_pretrained(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    enc = tok(["passage: short"], return_tensors="pt")
    with torch.no_grad():
        hidden = plain(**enc).last_hidden_state.mean(dim=1)
    torch.testing.assert_close(torch.nn.functional.normalize(hidden, dim=-1), d[2:3], atol=1e-5, rtol=0)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "embedding dimensions | 384" in card and "batch_size" in card


@pytest.mark.slow
def test_smollm2_special_tokens_lora_step_merge_save_reload(smollm2_dir, tmp_path):
    model = BiEncoder.from_pretrained(
        smollm2_dir,
        special_tokens=ICL_SPECIAL_TOKENS,
        lora={
            "r": 8,
            "alpha": 16,
            "dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        },
        query_prefix="<instruct>Find the passage.\n<query>",
        max_query_len=24,
        max_passage_len=24,
    )
    cfg, tok = model.config, model.tokenizer
    assert (cfg.pooling, cfg.add_eos, cfg.padding_side) == ("last", True, "left")
    assert len(tok) == 49152 + 3 and model.encoder.get_input_embeddings().weight.shape[0] == 49155

    # one optimisation step through LoRA and the new token rows
    q_tok = model.tokenize(QUERIES, is_query=True)
    d_tok = model.tokenize(DOCS[:2], is_query=False)
    batch = {
        "q_input_ids": q_tok["input_ids"],
        "q_attention_mask": q_tok["attention_mask"],
        "d_input_ids": d_tok["input_ids"],
        "d_attention_mask": d_tok["attention_mask"],
    }
    from densetune.losses import ContrastiveLoss

    before = model.encode_texts(QUERIES, is_query=True)
    model.train()
    q, p = model(batch)
    loss = ContrastiveLoss(temperature=0.05)(q, p, n_passages=1)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)
    torch.optim.SGD(trainable, lr=0.5).step()
    after = model.encode_texts(QUERIES, is_query=True)
    assert (after - before).abs().max() > 1e-4

    docs = model.encode_texts(DOCS[:3], is_query=False)
    model.save_pretrained(tmp_path / "smol")
    reloaded = BiEncoder.from_pretrained(tmp_path / "smol")
    assert reloaded.config.query_prefix == cfg.query_prefix and len(reloaded.tokenizer) == 49155
    torch.testing.assert_close(reloaded.encode_texts(QUERIES, is_query=True), after, atol=1e-5, rtol=0)
    torch.testing.assert_close(reloaded.encode_texts(DOCS[:3], is_query=False), docs, atol=1e-5, rtol=0)

    # sentence-transformers: EOS comes from the saved tokenizer, last-token pooling from 1_Pooling
    st = _sentence_transformer(tmp_path / "smol")
    torch.testing.assert_close(
        st.encode(DOCS[:3], prompt_name="document", convert_to_tensor=True), docs, atol=1e-5, rtol=0
    )
