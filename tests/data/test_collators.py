"""Collators: NeMo bi-/cross-encoder, LLM-Embedder and BGE-EN-ICL, with the real MiniLM and SmolLM2 tokenizers."""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import pytest
import torch

from densetune.data.collators import (
    BiEncoderCollator,
    CrossEncoderCollator,
    RetrievalBiencoderCollator,
    _doc_id_str_to_int64,
    _unpack_doc_values,
    feature_to_group,
)
from densetune.data.flag_collators import RetrievalDataCollator, SameEmbedCollator
from densetune.data.records import Doc, Group

PROMPT = "Given a question, retrieve passages that answer it"


def md5_int63(s: str) -> int:
    """NeMo's hash, written independently: MD5, first 8 bytes little-endian, top bit cleared."""
    return struct.unpack("<Q", hashlib.md5(s.encode("utf-8")).digest()[:8])[0] & (2**63 - 1)


def nemo_item(i: int, n: int = 4, ids: bool = True, scores: bool = False) -> dict:
    item = {
        "question": f"question number {i} about retrieval",
        "doc_text": [f"positive passage {i}"] + [f"negative passage {i} {j} " * (j + 1) for j in range(1, n)],
        "doc_image": [""] * n,
        "query_instruction": "",
        "passage_instruction": "",
    }
    if ids:
        item["doc_id"] = [f"d{i}-{j}" for j in range(n)]
    if scores:
        item["teacher_scores"] = [float(n - j) for j in range(n)]
    return item


# -- seed helpers -----------------------------------------------------------------------------------------


def test_doc_id_hash_matches_md5_definition():
    assert _doc_id_str_to_int64("d_123") == md5_int63("d_123") == 7742005562017946246
    assert _doc_id_str_to_int64("doc-1") == 2915996249217350858
    assert 0 <= _doc_id_str_to_int64("x" * 1000) < 2**63


def test_unpack_doc_values_one_row_per_document():
    rows = _unpack_doc_values([{"input_ids": [[1, 2], [3, 4]], "attention_mask": [[1, 1], [1, 0]]}])
    assert rows == [
        {"input_ids": [1, 2], "attention_mask": [1, 1]},
        {"input_ids": [3, 4], "attention_mask": [1, 0]},
    ]


def test_group_titles_are_joined_into_the_text(minilm_tokenizer):
    group = Group("q", "q1", [Doc("a", "is red", title="Mars"), Doc("b", "no title")])
    batch = BiEncoderCollator(minilm_tokenizer).collate_groups([group])
    first = batch.d_input_ids[0][batch.d_attention_mask[0].bool()].tolist()
    assert first == minilm_tokenizer("Mars is red")["input_ids"]


def test_a_seed_item_reads_as_a_group():
    features = {"question": "q", "doc_text": ["pos", "neg"], "doc_id": ["a", "b"], "doc_image": ["img.png", ""],
                "teacher_scores": [1.0, 0.0], "task": "t"}  # fmt: skip
    back = feature_to_group(features)
    assert [d.id for d in back.docs] == ["a", "b"] and [d.text for d in back.docs] == ["pos", "neg"]
    assert back.docs[0].image == "img.png" and back.scores == [1.0, 0.0] and back.task == "t"
    llm = feature_to_group({"query": "q", "key": ["k1", "k2"], "task": "qa"})
    assert llm.query == "q" and [d.text for d in llm.docs] == ["k1", "k2"]
    with pytest.raises(ValueError, match="needs a query"):
        feature_to_group({"doc_text": ["x"]})


# -- BiEncoderCollator ------------------------------------------------------------------------------------


def test_biencoder_prefix_joining_exact_token_ids(minilm_tokenizer):
    collate = BiEncoderCollator(minilm_tokenizer, query_prefix="query:", passage_prefix="passage:")
    batch = collate([{"question": "what is bm25", "doc_text": ["bm25 ranks"]}])
    # "query:" + " " + "what is bm25": [CLS] query : what is bm ##2 ##5 [SEP]
    assert batch["q_input_ids"][0].tolist() == [101, 23032, 1024, 2054, 2003, 1038, 2213, 17788, 102]
    assert batch["q_input_ids"][0].tolist() == minilm_tokenizer("query: what is bm25")["input_ids"]
    assert batch["d_input_ids"][0].tolist() == minilm_tokenizer("passage: bm25 ranks")["input_ids"]
    # A prefix that already ends in a space is still joined with one (the seed's rule): two spaces, same ids.
    spaced = BiEncoderCollator(minilm_tokenizer, query_prefix="query: ")(
        [{"question": "what is bm25", "doc_text": ["x"]}]
    )
    assert spaced["q_input_ids"].tolist() == batch["q_input_ids"].tolist()


def test_biencoder_shapes_order_labels_padding(minilm_tokenizer):
    collate = RetrievalBiencoderCollator(minilm_tokenizer, q_max_len=64, p_max_len=64, pad_to_multiple_of=8)
    items = [nemo_item(i) for i in range(3)]
    batch = collate(items)
    assert set(batch) == {
        "q_input_ids",
        "q_attention_mask",
        "d_input_ids",
        "d_attention_mask",
        "labels",
        "passage_doc_ids",
    }
    b, n = 3, 4
    assert batch["q_input_ids"].shape[0] == b and batch["d_input_ids"].shape[0] == b * n
    assert batch["q_input_ids"].shape[1] % 8 == 0 and batch["d_input_ids"].shape[1] % 8 == 0
    assert batch["q_attention_mask"].shape == batch["q_input_ids"].shape
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 0, 0]
    # Row i*n + j is document j of query i, positive first; padding is 0 after the text.
    for i, item in enumerate(items):
        for j, text in enumerate(item["doc_text"]):
            ids = minilm_tokenizer(text)["input_ids"]
            row = batch["d_input_ids"][i * n + j]
            assert row[: len(ids)].tolist() == ids and row[len(ids) :].eq(0).all()
            assert batch["d_attention_mask"][i * n + j].sum().item() == len(ids)
    # The batch pads to its longest row rounded up to 8, not to p_max_len.
    longest = max(len(minilm_tokenizer(t)["input_ids"]) for it in items for t in it["doc_text"])
    assert batch["d_input_ids"].shape[1] == -(-longest // 8) * 8


def test_biencoder_no_token_type_ids_even_for_bert(minilm_tokenizer):
    assert "token_type_ids" in minilm_tokenizer("x")  # MiniLM's tokenizer makes them...
    batch = BiEncoderCollator(minilm_tokenizer)([nemo_item(0)])
    assert not any("token_type_ids" in k for k in batch)  # ...the seed asks for none (single segment).


def test_biencoder_passage_doc_ids_md5(minilm_tokenizer):
    collate = BiEncoderCollator(minilm_tokenizer)
    items = [nemo_item(0, n=2), nemo_item(1, n=2)]
    batch = collate(items)
    expected = [md5_int63(s) for it in items for s in it["doc_id"]]
    assert batch["passage_doc_ids"].dtype == torch.int64
    assert batch["passage_doc_ids"].tolist() == expected
    # Any document without an id (inline data): no ids for the batch, never partial ones.
    items[1]["doc_id"] = ["d1-0", ""]
    assert "passage_doc_ids" not in collate(items)
    assert "passage_doc_ids" not in collate([nemo_item(0, ids=False)])


def test_biencoder_teacher_scores_only_when_every_group_has_them(minilm_tokenizer):
    collate = BiEncoderCollator(minilm_tokenizer)
    batch = collate([nemo_item(0, scores=True), nemo_item(1, scores=True)])
    assert batch["teacher_scores"].shape == (2, 4) and batch["teacher_scores"].dtype == torch.float32
    assert batch["teacher_scores"][0].tolist() == [4.0, 3.0, 2.0, 1.0]
    assert "teacher_scores" not in collate([nemo_item(0, scores=True), nemo_item(1)])


def test_biencoder_group_sizes_must_agree(minilm_tokenizer):
    collate = BiEncoderCollator(minilm_tokenizer)
    with pytest.raises(
        ValueError, match=r"same number of documents; got 3 documents in 1 group\(s\), 4 documents in 2"
    ):
        collate([nemo_item(0), nemo_item(1, n=3), nemo_item(2)])
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def test_biencoder_dataset_instructions_replace_prefixes(minilm_tokenizer):
    collate = BiEncoderCollator(
        minilm_tokenizer, query_prefix="query:", passage_prefix="passage:", use_dataset_instruction=True
    )
    with_inst = dict(nemo_item(0, n=2), query_instruction="Find:", passage_instruction="Doc:")
    without = dict(nemo_item(1, n=2))
    queries, docs, n = collate.texts([with_inst, without])
    assert n == 2
    assert queries == ["Find: question number 0 about retrieval", "question number 1 about retrieval"]
    assert docs[0] == "Doc: positive passage 0" and docs[2] == "positive passage 1"
    batch = collate([with_inst, without])
    assert batch["q_input_ids"][0][:4].tolist() == minilm_tokenizer("Find: question")["input_ids"][:4]


def test_biencoder_given_a_prompt_formats_with_it_and_refuses_other_prefixes(minilm_tokenizer):
    """The model's prompt (here a folder's, prepended verbatim) is the collator's; prefixes may only agree."""
    from densetune.data.prompts import Prompt
    from densetune.errors import ConfigError

    prompt = Prompt("Find:\n", "Doc:\n", separator="")
    queries, docs, _ = BiEncoderCollator(minilm_tokenizer, prompt=prompt).texts([nemo_item(0, n=2)])
    assert queries == ["Find:\nquestion number 0 about retrieval"] and docs[0] == "Doc:\npositive passage 0"
    same = BiEncoderCollator(minilm_tokenizer, query_prefix="query:", prompt=Prompt("query: ", separator=""))
    assert same.texts([nemo_item(0, n=2)])[0] == ["query: question number 0 about retrieval"]
    with pytest.raises(ConfigError) as err:
        BiEncoderCollator(minilm_tokenizer, passage_prefix="passage:", prompt=prompt)
    assert err.value.key == "passage_prefix" and "'Doc:\\n'" in str(err.value)


def test_biencoder_groups_and_dicts_give_the_same_tensors(minilm_tokenizer):
    collate = BiEncoderCollator(
        minilm_tokenizer, query_prefix="query:", passage_prefix="passage:", pad_to_multiple_of=8
    )
    items = [nemo_item(i, scores=True) for i in range(2)]
    groups = [feature_to_group(it) for it in items]
    a, b = collate(items), collate(groups)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_biencoder_truncation_and_max_length_padding(minilm_tokenizer):
    collate = BiEncoderCollator(minilm_tokenizer, q_max_len=8, p_max_len=16, padding="max_length")
    item = {"question": "word " * 50, "doc_text": ["word " * 50, "short"]}
    batch = collate([item])
    assert batch["q_input_ids"].shape == (1, 8) and batch["q_input_ids"][0, -1].item() == 102  # [SEP] kept
    assert batch["d_input_ids"].shape == (2, 16) and batch["d_attention_mask"][1].sum().item() == 3


def test_biencoder_one_call_equals_the_seeds_tokenize_then_pad(minilm_tokenizer):
    """The seed tokenised without padding, then padded with tokenizer.pad: same tensors as one call."""
    collate = BiEncoderCollator(
        minilm_tokenizer, q_max_len=32, p_max_len=48, query_prefix="query:", pad_to_multiple_of=8
    )
    items = [nemo_item(i) for i in range(4)]
    batch = collate(items)
    queries, docs, _ = collate.texts(items)
    for prefix, texts, max_len in (("q_", queries, 32), ("d_", docs, 48)):
        enc = minilm_tokenizer(texts, max_length=max_len, truncation=True, return_token_type_ids=False)
        feats = [{k: enc[k][i] for k in enc} for i in range(len(texts))]
        padded = minilm_tokenizer.pad(feats, padding=True, pad_to_multiple_of=8, return_tensors="pt")
        assert torch.equal(batch[prefix + "input_ids"], padded["input_ids"])
        assert torch.equal(batch[prefix + "attention_mask"], padded["attention_mask"])


@pytest.mark.parametrize("padding", [True, "max_length"])
def test_biencoder_token_cache_gives_the_uncached_tensors(minilm_tokenizer, padding):
    kwargs = dict(q_max_len=24, p_max_len=40, query_prefix="query:", padding=padding, pad_to_multiple_of=8)
    cached = BiEncoderCollator(minilm_tokenizer, **kwargs)
    plain = BiEncoderCollator(minilm_tokenizer, cache_tokens=0, **kwargs)
    batches = [[nemo_item(i), nemo_item(i + 1)] for i in range(3)] + [[nemo_item(1), nemo_item(3)]]  # repeats
    for batch in batches:
        a, b = cached(batch), plain(batch)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    cache = cached._caches[40]
    assert cache.tokens == sum(len(v) for v in cache.ids.values()) > 0
    assert len(cache.ids) == 4 * 4  # 4 distinct groups x 4 documents, each tokenised once


def test_token_cache_left_padding_budget_and_no_pad(decoder_tokenizer):
    import copy

    tok = copy.deepcopy(decoder_tokenizer)
    tok.padding_side = "left"
    items = [nemo_item(i) for i in range(3)]
    a = BiEncoderCollator(tok, pad_to_multiple_of=8)(items)
    b = BiEncoderCollator(tok, pad_to_multiple_of=8, cache_tokens=0)(items)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["d_attention_mask"][:, -1].eq(1).all()  # left padding: real tokens at the end
    small = BiEncoderCollator(tok, cache_tokens=10)
    small(items)
    assert all(c.tokens <= 10 for c in small._caches.values())
    with pytest.raises(ValueError, match="needs sequences of one length"):
        BiEncoderCollator(tok, padding=False)(items)
    with pytest.raises(ValueError, match="cache_tokens"):
        BiEncoderCollator(tok, cache_tokens=-1)


def test_biencoder_rejects_bad_settings(minilm_tokenizer):
    with pytest.raises(ValueError, match="q_max_len"):
        BiEncoderCollator(minilm_tokenizer, q_max_len=0)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        BiEncoderCollator(minilm_tokenizer, pad_to_multiple_of=0)


# -- CrossEncoderCollator ---------------------------------------------------------------------------------


def test_cross_encoder_rows_template_labels(minilm_tokenizer):
    collate = CrossEncoderCollator(64, minilm_tokenizer, pad_to_multiple_of=8)
    items = [nemo_item(0, n=3), nemo_item(1, n=3)]
    batch = collate(items)
    assert batch["input_ids"].shape[0] == 6 and batch["input_ids"].shape[1] % 8 == 0
    assert batch["labels"].tolist() == [0, 0] and batch["labels"].dtype == torch.long
    # Row 3 is query 1 with its positive, formatted with the seed's template.
    text = f"question:{items[1]['question']} \n \n passage:{items[1]['doc_text'][0]}"
    ids = minilm_tokenizer(text)["input_ids"]
    assert batch["input_ids"][3][: len(ids)].tolist() == ids
    assert batch["attention_mask"][3].sum().item() == len(ids)


def test_cross_encoder_truncates_and_accepts_seed_keywords(minilm_tokenizer):
    collate = CrossEncoderCollator(
        rerank_max_length=12, tokenizer=minilm_tokenizer, prompt_template="{query} || {passage}", args=None
    )
    batch = collate([{"question": "word " * 40, "doc_text": ["text " * 40, "b"]}])
    assert batch["input_ids"].shape == (2, 12) and batch["input_ids"][0, -1].item() == 102
    assert collate.args is None
    with pytest.raises(ValueError, match="prompt_template"):
        CrossEncoderCollator(12, minilm_tokenizer, prompt_template="{query}")


def test_cross_encoder_pre_flattened_rows_use_num_labels(minilm_tokenizer):
    rows = [{"question": "q", "doc_text": t, "num_labels": 1} for t in ("pos", "neg")]
    batch = CrossEncoderCollator(32, minilm_tokenizer)(rows)
    assert batch["input_ids"].shape[0] == 2 and batch["labels"].tolist() == [0]


def test_cross_encoder_group_sizes_must_agree(minilm_tokenizer):
    with pytest.raises(ValueError, match="same number of documents"):
        CrossEncoderCollator(32, minilm_tokenizer)([nemo_item(0, n=2), nemo_item(1, n=3)])


# -- RetrievalDataCollator (LLM-Embedder) -----------------------------------------------------------------


def test_llm_embedder_ragged_keys_mask_and_scores(minilm_tokenizer):
    collate = RetrievalDataCollator(minilm_tokenizer, query_max_length=16, key_max_length=16)
    rows = [
        {
            "query": "qa one",
            "key": ["k1", "k2", "k3"],
            "task": "qa",
            "teacher_scores": [0.9, 0.5, 0.1],
            "key_index": [4, 5, 6],
        },
        {"query": "qa two", "key": ["k4"], "task": "qa", "teacher_scores": [0.7], "key_index": [7]},
    ]
    out = collate(rows)
    assert out["query"]["input_ids"].shape[0] == 2
    assert out["key"]["input_ids"].shape[0] == 6  # B * max group size, groups padded with ""
    assert out["key_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["key"]["input_ids"][4].tolist()[:2] == [101, 102]  # the "" padding key is [CLS] [SEP]
    assert out["key_index"].tolist() == [[4, 5, 6], [7, -1, -1]]
    assert torch.allclose(out["teacher_scores"], torch.tensor([[0.9, 0.5, 0.1], [0.7, 0.0, 0.0]]))
    assert out["task"] == "qa"


def test_llm_embedder_scores_none_tasks_and_errors(minilm_tokenizer):
    collate = RetrievalDataCollator(minilm_tokenizer)
    out = collate([{"query": "a", "key": ["b", "c"], "task": "qa", "teacher_scores": None}] * 2)
    assert out["teacher_scores"] is None and out["key_mask"].tolist() == [[1, 1], [1, 1]]
    with pytest.raises(ValueError, match="one task"):
        collate([{"query": "a", "key": ["b"], "task": "qa"}, {"query": "a", "key": ["b"], "task": "chat"}])
    with pytest.raises(ValueError, match="teacher_scores given for 1 of 2"):
        collate(
            [
                {"query": "a", "key": ["b"], "teacher_scores": [1.0]},
                {"query": "a", "key": ["b"], "teacher_scores": None},
            ]
        )


def test_llm_embedder_cross_pairs(minilm_tokenizer):
    collate = RetrievalDataCollator(minilm_tokenizer, query_max_length=8, key_max_length=8, cross=True)
    out = collate(
        [
            {"query": "first query", "key": ["alpha", "beta"]},
            {"query": "second query", "key": ["gamma", "delta"]},
        ]
    )
    assert "query" not in out and "key" not in out and out["batch_size"] == 2
    assert out["cross"]["input_ids"].shape[0] == 4
    ids = minilm_tokenizer("second query", "delta")["input_ids"]
    assert out["cross"]["input_ids"][3][: len(ids)].tolist() == ids


def test_llm_embedder_same_dataset_batches_unpacked(minilm_tokenizer):
    rows = [{"query": f"q{i}", "key": [f"p{i}", f"n{i}"], "task": "qa"} for i in range(3)]
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    plain = RetrievalDataCollator(minilm_tokenizer)(rows)
    as_columns = RetrievalDataCollator(minilm_tokenizer, inbatch_same_dataset=True)([columns])
    as_lists = RetrievalDataCollator(minilm_tokenizer, inbatch_same_dataset=True)([rows])
    for out in (as_columns, as_lists):
        assert torch.equal(out["query"]["input_ids"], plain["query"]["input_ids"])
        assert torch.equal(out["key"]["input_ids"], plain["key"]["input_ids"])


def test_llm_embedder_groups_and_corpus_rows(minilm_tokenizer):
    collate = RetrievalDataCollator(minilm_tokenizer)
    out = collate([Group("q", "1", [Doc("a", "pos"), Doc("b", "neg")], scores=[1.0, 0.0], task="qa")])
    assert out["key"]["input_ids"].shape[0] == 2 and out["teacher_scores"].tolist() == [[1.0, 0.0]]
    corpus = collate([{"content": "title text"}, {"content": "other"}])
    assert corpus["content"]["input_ids"].shape[0] == 2


# -- SameEmbedCollator (BGE-EN-ICL) -----------------------------------------------------------------------


def icl_groups(n: int = 6, group_size: int = 3, type: str = "retrieval", scores: bool = False) -> list[Group]:
    return [
        Group(
            query=f"what is topic {i}",
            query_id=f"q{i}",
            docs=[Doc(f"p{i}", f"passage about topic {i}")]
            + [Doc(f"n{i}{j}", f"other text {j}") for j in range(1, group_size)],
            scores=[1.0] + [0.1] * (group_size - 1) if scores else None,
            type=type,
            prompt=PROMPT,
        )
        for i in range(n)
    ]


def test_same_embed_eos_left_padding_multiple_of_8(icl_tokenizer):
    collate = SameEmbedCollator(icl_tokenizer, query_max_len=256, passage_max_len=64)
    out = collate(icl_groups())
    q, p = out["query"], out["passage"]
    eos = icl_tokenizer.eos_token_id
    for enc in (q, p):
        assert enc["input_ids"].shape[1] % 8 == 0
        # Left padding: the last position of every row is its EOS, the padding sits on the left.
        assert enc["input_ids"][:, -1].eq(eos).all() and enc["attention_mask"][:, -1].eq(1).all()
        first_real = enc["attention_mask"].argmax(dim=1)
        for row, start in zip(enc["attention_mask"], first_real.tolist()):
            assert row[:start].eq(0).all() and row[start:].eq(1).all()
    assert p["input_ids"].shape[0] == 6 * 3
    assert q["attention_mask"].sum(dim=1).max().item() <= 256
    assert out["messages"] == ["normal"] * 18 and out["teacher_scores"] is None


def test_same_embed_query_layout_without_examples(icl_tokenizer):
    collate = SameEmbedCollator(
        icl_tokenizer, query_max_len=64, passage_max_len=32, retrieval_use_examples=False
    )
    groups = icl_groups(2)
    queries, passages = collate.texts(groups)
    assert queries[0] == f"<instruct>{PROMPT}\n<query>what is topic 0\n<response>"
    assert passages[:3] == ["passage about topic 0", "other text 1", "other text 2"]  # retrieval: raw
    out = collate(groups)
    ids = icl_tokenizer(queries[0])["input_ids"] + [icl_tokenizer.eos_token_id]
    row = out["query"]["input_ids"][0]
    assert row[-len(ids) :].tolist() == ids
    # The special tokens are single tokens.
    assert icl_tokenizer.convert_tokens_to_ids("<response>") in row.tolist()
    plain = SameEmbedCollator(
        icl_tokenizer, query_max_len=64, use_special_tokens=False, retrieval_use_examples=False
    )
    assert plain.texts(groups)[0][1] == f"Instruct: {PROMPT}\nQuery: what is topic 1\nResponse:"


def test_same_embed_icl_examples_from_the_batch_never_own_pair(icl_tokenizer):
    collate = SameEmbedCollator(icl_tokenizer, query_max_len=512, passage_max_len=64, seed=3)
    groups = icl_groups(6)
    queries, _ = collate.texts(groups)
    assert queries == collate.texts(groups)[0]  # the draw is a function of the batch and the seed
    counts = []
    for i, text in enumerate(queries):
        blocks = text.split("\n\n")
        examples, final = blocks[:-1], blocks[-1]
        counts.append(len(examples))
        assert final == f"<instruct>{PROMPT}\n<query>what is topic {i}\n<response>"
        assert len(examples) <= 5
        for block in examples:
            j = int(block.split("what is topic ")[1].split("\n")[0])
            assert j != i  # never its own pair
            assert block == f"<instruct>{PROMPT}\n<query>what is topic {j}\n<response>passage about topic {j}"
    assert max(counts) > 0  # with six queries some get examples (0..5 drawn per query)
    other_seed = SameEmbedCollator(icl_tokenizer, query_max_len=512, passage_max_len=64, seed=4).texts(
        groups
    )[0]
    assert other_seed != queries


def test_same_embed_icl_budget_is_a_parameter(icl_tokenizer):
    groups = icl_groups(6)
    none = SameEmbedCollator(icl_tokenizer, query_max_len=512, icl_budget=0, seed=3).texts(groups)[0]
    assert all(q.count("<query>") == 1 for q in none)
    # The default budget is the room the query leaves: small query_max_len still admits short examples
    # (the seed's fixed query_max_len - 512 admitted none below 512).
    small = SameEmbedCollator(icl_tokenizer, query_max_len=128, seed=3)
    texts = small.texts(groups)[0]
    assert any(q.count("<query>") > 1 for q in texts)
    out = small(groups)
    assert out["query"]["attention_mask"].sum(dim=1).max().item() <= 128


def test_same_embed_symmetric_tasks(icl_tokenizer):
    collate = SameEmbedCollator(icl_tokenizer, query_max_len=128, passage_max_len=64)
    sts = icl_groups(2, type="symmetric_sts", scores=True)
    _, passages = collate.texts(sts)
    assert passages[0] == f"<instruct>{PROMPT}\n<query>passage about topic 0\n<response>"
    out = collate(sts)
    assert out["messages"] == ["normal"] * 6
    assert out["teacher_scores"] == [1.0, 0.1, 0.1, 1.0, 0.1, 0.1]
    clustering = collate(icl_groups(2, type="symmetric_clustering"))
    assert clustering["messages"] == ["not in-batch"]
    with pytest.raises(ValueError, match="one type"):
        collate(icl_groups(1) + icl_groups(1, type="symmetric_sts"))


def test_same_embed_seed_input_and_sub_batches(icl_tokenizer):
    collate = SameEmbedCollator(icl_tokenizer, query_max_len=64, passage_max_len=64, sub_batch_size=2)
    q = {"input_ids": [[1, 2, 3], [4]], "attention_mask": [[1, 1, 1], [1]]}
    p = {"input_ids": [[5, 6], [7], [8, 9, 10]], "attention_mask": [[1, 1], [1], [1, 1, 1]]}
    out = collate([(q, p, ["normal"] * 3, [])])
    assert isinstance(out["query"], list) and len(out["query"]) == 1 and len(out["passage"]) == 2
    assert out["query"][0]["input_ids"].shape == (2, 8)
    assert out["query"][0]["input_ids"][1, -1].item() == 4 and out["query"][0]["attention_mask"][1].sum() == 1
    assert out["teacher_scores"] is None
    # A DataLoader with batch_size=1 over pre-built batches hands over [[groups...]]: flattened.
    nested = SameEmbedCollator(icl_tokenizer, query_max_len=64, passage_max_len=64)([icl_groups(2)])
    assert nested["passage"]["input_ids"].shape[0] == 6


def test_same_embed_requires_eos(minilm_tokenizer):
    # MiniLM has no eos_token: appending one is impossible, and the error says how to proceed.
    if minilm_tokenizer.eos_token_id is None:
        with pytest.raises(ValueError, match="eos_token"):
            SameEmbedCollator(minilm_tokenizer)
    SameEmbedCollator(minilm_tokenizer, append_eos=False, padding_side="right", use_special_tokens=False)


# -- SameEmbedCollator(output="train"): the batch densetune train feeds to the model and the loss ------------


def test_same_embed_train_output_is_the_bi_encoder_batch(icl_tokenizer):
    groups = [dataclasses.replace(g, task="faq") for g in icl_groups(4, group_size=3, scores=True)]
    seed = SameEmbedCollator(icl_tokenizer, query_max_len=128, passage_max_len=32, seed=5)(groups)
    out = SameEmbedCollator(icl_tokenizer, query_max_len=128, passage_max_len=32, seed=5, output="train")(
        groups
    )
    assert set(out) == {
        "q_input_ids", "q_attention_mask", "d_input_ids", "d_attention_mask", "labels", "passage_doc_ids",
        "teacher_scores", "task",
    }  # fmt: skip
    # The same tokens as the seed's dict, under the bi-encoder names.
    assert torch.equal(out["q_input_ids"], seed["query"]["input_ids"])
    assert torch.equal(out["d_attention_mask"], seed["passage"]["attention_mask"])
    assert out["d_input_ids"].shape[0] == 4 * 3 and torch.equal(
        out["labels"], torch.zeros(4, dtype=torch.long)
    )
    assert out["teacher_scores"].shape == (4, 3) and out["teacher_scores"][:, 0].eq(1.0).all()
    ids = [d.id for g in groups for d in g.docs]
    assert out["passage_doc_ids"].tolist() == [md5_int63(i) for i in ids]
    assert out["task"] == "faq"
    from densetune.losses import loss_inputs

    kwargs = loss_inputs(out)
    assert kwargs["n_passages"] == 3 and "in_batch_negatives" not in kwargs


@pytest.mark.parametrize(
    ("type", "in_batch"),
    [
        ("retrieval", None),
        ("symmetric_sts", None),
        ("symmetric_clustering", False),
        ("symmetric_class", False),
        ("only_1neg", None),
    ],
)
def test_same_embed_train_output_marks_no_in_batch_types(icl_tokenizer, type, in_batch):
    collate = SameEmbedCollator(icl_tokenizer, query_max_len=96, passage_max_len=32, output="train")
    out = collate(icl_groups(3, type=type))
    # Present only where the seed says "not in-batch": elsewhere the loss's own setting applies.
    assert out.get("in_batch_negatives") is in_batch
    assert "task" not in out  # the groups name no task


def test_same_embed_train_output_from_the_seeds_tuple(icl_tokenizer):
    collate = SameEmbedCollator(icl_tokenizer, query_max_len=64, passage_max_len=64, output="train")
    q = {"input_ids": [[1, 2, 3], [4]], "attention_mask": [[1, 1, 1], [1]]}
    p = {"input_ids": [[5, 6], [7], [8, 9, 10], [11]], "attention_mask": [[1, 1], [1], [1, 1, 1], [1]]}
    out = collate([(q, p, ["not in-batch"], [0.9, 0.1, 0.8, 0.2])])
    assert out["q_input_ids"].shape == (2, 8) and out["d_input_ids"].shape == (4, 8)
    assert out["q_input_ids"][1, -1].item() == 4 and out["in_batch_negatives"] is False
    torch.testing.assert_close(out["teacher_scores"], torch.tensor([[0.9, 0.1], [0.8, 0.2]]))
    assert "passage_doc_ids" not in out  # pre-tokenised input carries no document ids


def test_same_embed_group_size_by_type_cuts_each_type(icl_tokenizer):
    sizes = {"retrieval": 4, "symmetric_sts": 2, "only_1neg": 2}
    collate = SameEmbedCollator(
        icl_tokenizer, query_max_len=96, passage_max_len=32, output="train", group_size_by_type=sizes
    )
    for type, expected in (("retrieval", 4), ("symmetric_sts", 2), ("only_1neg", 2), ("symmetric_class", 5)):
        groups = icl_groups(3, group_size=5, type=type, scores=True)
        out = collate(groups)
        assert out["d_input_ids"].shape[0] == 3 * expected, type
        assert out["teacher_scores"].shape == (3, expected)
        trimmed = collate.trim_groups(groups)
        assert [d.id for d in trimmed[0].docs] == [d.id for d in groups[0].docs[:expected]]  # positive first
        assert len(collate.texts(groups)[1]) == 3 * expected
    # A cap: groups already smaller than their type's size keep every document.
    assert collate(icl_groups(3, group_size=3))["d_input_ids"].shape[0] == 9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output": "tensors"}, "output must be one of 'seed', 'train'"),
        ({"output": "train", "sub_batch_size": 2}, "grad_cache_chunk_size"),
        ({"group_size_by_type": {"classification": 4}}, "unknown type 'classification'; valid: retrieval"),
        ({"group_size_by_type": {"symmetric_sts": 0}}, r"group_size_by_type\['symmetric_sts'\] must be"),
        ({"group_size_by_type": [4]}, "must map Example types"),
    ],
)
def test_same_embed_rejects_bad_settings(icl_tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SameEmbedCollator(icl_tokenizer, **kwargs)


def test_same_embed_needs_the_special_tokens_in_the_tokenizer(decoder_tokenizer):
    # Without them "<instruct>" would be several ordinary tokens: the prompt layout the model learns breaks.
    with pytest.raises(ValueError, match="splits <instruct>, <query>, <response> into several tokens"):
        SameEmbedCollator(decoder_tokenizer)
    SameEmbedCollator(decoder_tokenizer, use_special_tokens=False)


def test_symmetric_class_loss_ignores_other_groups_passages(icl_tokenizer):
    """End to end with the loss: a class batch scores each query against its own group only."""
    import inspect

    from densetune.losses import ContrastiveLoss, loss_inputs

    if "in_batch_negatives" not in inspect.signature(ContrastiveLoss.forward).parameters:
        pytest.skip("densetune.losses does not take in_batch_negatives per batch yet")
    collate = SameEmbedCollator(icl_tokenizer, query_max_len=96, passage_max_len=32, output="train")
    batch = collate(icl_groups(3, group_size=3, type="symmetric_class"))
    kwargs = loss_inputs(batch)
    assert kwargs["in_batch_negatives"] is False
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(9, 16), dim=-1)
    loss_fn = ContrastiveLoss(temperature=0.05, in_batch_negatives=True)
    own = ContrastiveLoss(temperature=0.05, in_batch_negatives=False)
    torch.testing.assert_close(loss_fn(q, p, **kwargs), own(q, p, **{**kwargs, "in_batch_negatives": None}))
    # The other groups' passages moved onto query 0 change nothing for it: they are not its negatives.
    moved = p.clone()
    moved[3:] = q[0]
    torch.testing.assert_close(loss_fn.per_query(q, moved, **kwargs)[0], loss_fn.per_query(q, p, **kwargs)[0])
    # Without the mark the same batch does use them.
    del batch["in_batch_negatives"]
    kwargs = loss_inputs(batch)
    assert loss_fn.per_query(q, moved, **kwargs)[0] > loss_fn.per_query(q, p, **kwargs)[0] + 1.0


def test_flag_collators_still_resolve_from_their_old_module():
    """Configs and checkpoints saved with ``_target_: densetune.data.collators.SameEmbedCollator`` still load."""
    from densetune.config import locate
    from densetune.data import flag_collators

    assert locate("densetune.data.collators.SameEmbedCollator") is SameEmbedCollator
    assert locate("densetune.data.collators.RetrievalDataCollator") is flag_collators.RetrievalDataCollator
