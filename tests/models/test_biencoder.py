"""BiEncoder on tiny random BERT / Llama folders: settings, tokenisation, decoder features, LoRA, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from densetune.models.biencoder import ICL_SPECIAL_TOKENS, BiEncoder

TEXTS = ["a short one", "a much longer text about dense retrieval and contrastive training", "x"]


def _batch(model: BiEncoder, queries: list[str], docs: list[str]) -> dict:
    q = model.tokenize(queries, is_query=True)
    d = model.tokenize(docs, is_query=False)
    return {
        "q_input_ids": q["input_ids"],
        "q_attention_mask": q["attention_mask"],
        "d_input_ids": d["input_ids"],
        "d_attention_mask": d["attention_mask"],
    }


# -- encoder backbones -----------------------------------------------------------------------------------


def test_forward_shapes_normalised_float32(tiny_bert_dir):
    model = BiEncoder.from_pretrained(tiny_bert_dir)
    assert model.config.pooling == "mean" and model.config.normalize
    q, p = model(_batch(model, TEXTS[:2], TEXTS * 2))
    assert q.shape == (2, 32) and p.shape == (6, 32) and q.dtype == torch.float32
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(2))
    # one side alone (what gradient caching sends)
    only_q, none_p = model({k: v for k, v in _batch(model, TEXTS[:2], TEXTS).items() if k.startswith("q_")})
    assert none_p is None
    torch.testing.assert_close(only_q, q)


def test_encode_texts_keeps_input_order_and_training_mode(tiny_bert_dir):
    model = BiEncoder.from_pretrained(tiny_bert_dir).train()
    batched = model.encode_texts(TEXTS, is_query=False, batch_size=2)
    assert model.training  # restored
    singles = torch.cat([model.encode_texts([t], is_query=False) for t in TEXTS])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)
    assert batched.device.type == "cpu" and batched.shape == (3, 32)
    assert model.encode_texts([], is_query=True).shape == (0, 32)
    with pytest.raises(TypeError):
        model.encode_texts("one string", is_query=True)


def test_prefixes_follow_the_nemo_rule(tiny_bert_dir):
    model = BiEncoder.from_pretrained(tiny_bert_dir, query_prefix="query:", passage_prefix="passage:")
    assert model.prompt.query("what") == "query: what"
    assert model.prompt.passage("text") == "passage: text"
    with_prefix = model.encode_texts(["what"], is_query=True)
    plain = BiEncoder.from_pretrained(tiny_bert_dir).encode_texts(["query: what"], is_query=True)
    torch.testing.assert_close(with_prefix, plain)


def test_settings_from_a_sentence_transformers_folder(tiny_bert_dir, tmp_path):
    folder = tmp_path / "st"
    BiEncoder.from_pretrained(tiny_bert_dir).encoder.save_pretrained(folder)
    BiEncoder.from_pretrained(tiny_bert_dir).tokenizer.save_pretrained(folder)
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"embedding_dimension": 32, "pooling_mode": "cls"})
    )
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 77}))
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "document": "passage: "}})
    )
    model = BiEncoder.from_pretrained(folder)
    cfg = model.config
    assert (cfg.pooling, cfg.normalize, cfg.max_query_len, cfg.max_passage_len) == ("cls", False, 77, 77)
    assert model.prompt.query("q") == "query: q"  # prompts are prepended verbatim
    assert BiEncoder.from_pretrained(folder, pooling="avg", normalize=True).config.pooling == "mean"
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.warns(UserWarning, match="Dense"):
        BiEncoder.from_pretrained(folder)


def test_save_and_reload_with_lora_merged(tiny_bert_dir, tmp_path):
    model = BiEncoder.from_pretrained(tiny_bert_dir, lora={"r": 4, "dropout": 0.0}, query_prefix="q:")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # move the adapters away from their zero init
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    expected_q = model.encode_texts(TEXTS, is_query=True)
    expected_p = model.encode_texts(TEXTS, is_query=False)
    model.save_pretrained(
        tmp_path / "out", model_card={"loss": {"temperature": 0.02}, "data": ["train.jsonl"]}
    )
    reloaded = BiEncoder.from_pretrained(tmp_path / "out")
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    torch.testing.assert_close(reloaded.encode_texts(TEXTS, is_query=True), expected_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reloaded.encode_texts(TEXTS, is_query=False), expected_p, atol=1e-5, rtol=1e-5)
    card = (tmp_path / "out" / "README.md").read_text()
    assert (
        "## Loss" in card and "temperature" in card and "train.jsonl" in card and "| pooling | mean |" in card
    )
    # the training model still has its adapters (export does not merge in place)
    assert any("lora_" in n for n, _ in model.named_parameters())


def test_separate_towers(tiny_bert_dir, tmp_path):
    model = BiEncoder.from_pretrained(tiny_bert_dir, shared=False)
    assert model.passage_encoder is not None and not model.config.shared
    with torch.no_grad():
        model.passage_encoder.embeddings.word_embeddings.weight.mul_(1.5)
    q = model.encode_texts(TEXTS, is_query=True)
    p = model.encode_texts(TEXTS, is_query=False)
    assert (q - p).abs().max() > 1e-3
    model.save_pretrained(tmp_path / "two")
    assert (tmp_path / "two" / "query_encoder" / "config.json").is_file()
    reloaded = BiEncoder.from_pretrained(tmp_path / "two")
    assert reloaded.passage_encoder is not None
    torch.testing.assert_close(reloaded.encode_texts(TEXTS, is_query=False), p)
    torch.testing.assert_close(reloaded.encode_texts(TEXTS, is_query=True), q)


def test_invalid_options(tiny_bert_dir):
    with pytest.raises(ValueError, match="pooling"):
        BiEncoder.from_pretrained(tiny_bert_dir, pooling="max")
    with pytest.raises(ValueError, match="decoder-only"):
        BiEncoder.from_pretrained(tiny_bert_dir, bidirectional=True)
    with pytest.raises(ValueError, match="unknown key"):
        BiEncoder.from_pretrained(tiny_bert_dir, lora={"rnk": 4})
    with pytest.raises(ValueError, match="dtype"):
        BiEncoder.from_pretrained(tiny_bert_dir, dtype="float8")


# -- decoder backbones -----------------------------------------------------------------------------------


def test_decoder_defaults_last_token_eos_left_padding(tiny_llama_dir):
    model = BiEncoder.from_pretrained(tiny_llama_dir, max_passage_len=6)
    cfg, tok = model.config, model.tokenizer
    assert (cfg.pooling, cfg.add_eos, cfg.padding_side) == ("last", True, "left")
    encoded = model.tokenize(TEXTS, is_query=False)
    assert (encoded["input_ids"][:, -1] == tok.eos_token_id).all()  # EOS last, also when truncated
    assert encoded["input_ids"].shape[1] == 6 and encoded["attention_mask"][2, 0] == 0  # left padding
    # left padding does not change a text's embedding (RoPE is relative; pads are masked)
    single = model.encode_texts([TEXTS[2]], is_query=False)
    batched = model.encode_texts(TEXTS, is_query=False)
    torch.testing.assert_close(batched[2:], single, atol=1e-5, rtol=1e-5)


def test_bidirectional_attention(tiny_llama_dir, tmp_path):
    causal = BiEncoder.from_pretrained(tiny_llama_dir)
    both = BiEncoder.from_pretrained(tiny_llama_dir, bidirectional=True)
    ids = causal.tokenize(["one two three four"], is_query=False)
    with torch.no_grad():
        h_causal = causal.encoder(**ids).last_hidden_state
        h_both = both.encoder(**ids).last_hidden_state
        shorter = {k: v[:, :2] for k, v in ids.items()}
        h_causal_prefix = causal.encoder(**shorter).last_hidden_state
        h_both_prefix = both.encoder(**shorter).last_hidden_state
    # causal: the first tokens never see the later ones; bidirectional: they do
    torch.testing.assert_close(h_causal[:, :2], h_causal_prefix, atol=1e-5, rtol=1e-5)
    assert (h_both[:, :2] - h_both_prefix).abs().max() > 1e-3
    assert (h_both[:, 0] - h_causal[:, 0]).abs().max() > 1e-3
    # the flag survives export: densetune and plain transformers reload it bidirectional
    both.save_pretrained(tmp_path / "bi")
    assert BiEncoder.from_pretrained(tmp_path / "bi").config.bidirectional
    from transformers import AutoModel

    plain = AutoModel.from_pretrained(tmp_path / "bi")
    with torch.no_grad():
        torch.testing.assert_close(plain(**ids).last_hidden_state, h_both, atol=1e-5, rtol=1e-5)


def test_special_tokens_resize_and_lora_trains_their_rows(tiny_llama_dir, tmp_path):
    base_vocab = len(BiEncoder.from_pretrained(tiny_llama_dir).tokenizer)
    model = BiEncoder.from_pretrained(
        tiny_llama_dir, special_tokens=ICL_SPECIAL_TOKENS, lora={"r": 4, "alpha": 8, "dropout": 0.0}
    )
    tok = model.tokenizer
    assert len(tok) == base_vocab + 3
    ids = [tok.convert_tokens_to_ids(t) for t in ICL_SPECIAL_TOKENS]
    assert ids == list(range(base_vocab, base_vocab + 3))
    encoded = tok("<instruct>find<query>q<response>")["input_ids"]
    assert all(i in encoded for i in ids)
    assert model.encoder.get_input_embeddings().weight.shape[0] == base_vocab + 3

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    q, p = model(_batch(model, ["<instruct>find<query>what"], ["<response>a", "b"]))
    (q @ p.T).sum().backward()
    token_grads = [p.grad for n, p in model.named_parameters() if "trainable_tokens_delta" in n]
    assert token_grads and token_grads[0].abs().sum() > 0

    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    expected = model.encode_texts(["<query>what is it", "plain"], is_query=True)
    model.save_pretrained(tmp_path / "icl")
    reloaded = BiEncoder.from_pretrained(tmp_path / "icl")
    assert reloaded.config.special_tokens == list(ICL_SPECIAL_TOKENS)
    assert len(reloaded.tokenizer) == base_vocab + 3
    torch.testing.assert_close(
        reloaded.encode_texts(["<query>what is it", "plain"], is_query=True), expected, atol=1e-5, rtol=1e-5
    )


def test_model_card_and_files(tiny_llama_dir, tmp_path):
    model = BiEncoder.from_pretrained(tiny_llama_dir, pooling="weighted_mean", normalize=False)
    model.save_pretrained(tmp_path / "m", model_card={"metrics": {"ndcg@10": 0.5}})
    out = Path(tmp_path / "m")
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_weightedmean_tokens"] and not pooling["pooling_mode_mean_tokens"]
    assert not (out / "2_Normalize").exists()
    st = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st["similarity_fn_name"] == "dot" and st["prompts"] == {"query": "", "document": ""}
    assert "ndcg@10" in (out / "README.md").read_text()
    assert (out / "model.safetensors").is_file()
