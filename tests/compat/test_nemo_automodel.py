"""NeMo Automodel's and LLM-Embedder's public data names: make_retrieval_dataset, the NeMo YAML data block,
the collator helpers, LLM-Embedder's classes."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from densetune.compat.llm_embedder import (
    TASK_CONFIG,
    RetrievalDataset,
    SameDatasetTrainDataset,
    get_query_prompt,
)
from densetune.compat.nemo_automodel import make_retrieval_dataset
from densetune.config import apply_overrides, check_arguments, instantiate, load_yaml, locate
from densetune.data.records import doc_id_to_int64, text_doc_id
from densetune.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "nemo_dataloader.yaml"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSETUNE_CACHE", str(tmp_path / "cache"))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def nemo_inline(path: Path, n: int = 10) -> Path:
    """NeMo inline JSONL: query i has positive "pos i" and negatives "neg i.0" .. "neg i.(i%3)"."""
    return write_jsonl(
        path,
        [
            {
                "query": f"query {i}",
                "pos_doc": f"pos {i}",
                "neg_doc": [f"neg {i}.{j}" for j in range(i % 3 + 1)],
            }
            for i in range(n)
        ],
    )


def corpus_id_json(root: Path) -> Path:
    corpus = root / "corpus_a"
    corpus.mkdir(parents=True)
    meta = {
        "class": "TextQADataset",
        "corpus_id": "a",
        "query_instruction": "Q:",
        "passage_instruction": "P:",
    }
    (corpus / "merlin_metadata.json").write_text(json.dumps(meta))
    write_jsonl(corpus / "docs.jsonl", [{"id": f"a{i}", "text": f"doc a{i}"} for i in range(5)])
    data = [
        {
            "question_id": "x1",
            "question": "q one",
            "corpus_id": "a",
            "pos_doc": [{"id": "a0"}, "a1"],
            "neg_doc": ["a2", {"id": "a3"}],
        },
        {"question_id": "x2", "question": "q two", "corpus_id": "a", "pos_doc": ["a4"], "neg_doc": ["a0"]},
    ]
    path = root / "train.json"
    path.write_text(json.dumps({"corpus": [{"path": "corpus_a"}], "data": data}))
    return path


# -- make_retrieval_dataset -------------------------------------------------------------------------------


def test_inline_items_have_the_seed_fields_and_order(tmp_path):
    ds = make_retrieval_dataset([str(nemo_inline(tmp_path / "train.jsonl"))], n_passages=4)
    assert len(ds) == 10
    item = ds[2]
    assert item == {
        "question": "query 2",
        "doc_text": ["pos 2", "neg 2.0", "neg 2.1", "neg 2.2"],
        "doc_image": ["", "", "", ""],
        "doc_id": [text_doc_id(t) for t in ["pos 2", "neg 2.0", "neg 2.1", "neg 2.2"]],
        "query_instruction": "",
        "passage_instruction": "",
    }
    # Fewer negatives than needed wrap in file order: negatives[i % len].
    assert ds[1]["doc_text"] == ["pos 1", "neg 1.0", "neg 1.1", "neg 1.0"]
    assert ds[0]["doc_text"] == ["pos 0", "neg 0.0", "neg 0.0", "neg 0.0"]


def test_corpus_id_instructions_cycling_and_eval_size(tmp_path):
    path = corpus_id_json(tmp_path)
    ds = make_retrieval_dataset(path, n_passages=3, use_dataset_instruction=True, cycle_positive_docs=True)
    assert ds[0]["doc_id"] == ["a0", "a2", "a3"] and ds[0]["doc_text"] == ["doc a0", "doc a2", "doc a3"]
    assert ds[0]["query_instruction"] == "Q:" and ds[0]["passage_instruction"] == "P:"
    ds.set_epoch(1)
    assert ds[0]["doc_id"] == ["a1", "a2", "a3"]
    plain = make_retrieval_dataset(path, n_passages=3)
    plain.set_epoch(1)
    assert plain[0]["doc_id"][0] == "a0" and plain[0]["query_instruction"] == ""
    ev = make_retrieval_dataset(path, data_type="eval", n_passages=3, eval_negative_size=1)
    assert ev[0]["doc_id"] == ["a0", "a2"]
    assert make_retrieval_dataset(path, data_type="eval", n_passages=2)[1]["doc_id"] == ["a4", "a0"]
    assert make_retrieval_dataset(path, train_n_passages=2, n_passages=5)[0]["doc_id"] == ["a0", "a2"]


def test_num_samples_shuffle_and_window(tmp_path, caplog):
    a = str(nemo_inline(tmp_path / "a.jsonl", 10))
    b = str(nemo_inline(tmp_path / "b.jsonl", 4))
    ds = make_retrieval_dataset([{"path": a, "num_samples": 3}, b], n_passages=2, seed=5)
    assert ds.with_format(None)["_row"] == random.Random(5).sample(range(10), 3) + [10, 11, 12, 13]
    with caplog.at_level(logging.WARNING, logger="densetune.data"):
        ds = make_retrieval_dataset([{"path": b, "num_samples": 9}], n_passages=2)
    assert len(ds) == 4 and "requested 9 samples" in caplog.text
    window = make_retrieval_dataset(a, n_passages=2, max_train_samples=3, train_data_select_offset=4)
    assert [window[i]["question"] for i in range(3)] == ["query 4", "query 5", "query 6"]
    # do_shuffle applies with max_train_samples, as Dataset.shuffle(seed) (NeMo Automodel's rows for the seed)
    shuffled = make_retrieval_dataset(a, n_passages=2, do_shuffle=True, seed=1, max_train_samples=4)
    expected = np.random.default_rng(1).permutation(10)[:4].tolist()
    assert shuffled.with_format(None)["_row"] == expected
    assert [shuffled[i]["question"] for i in range(4)] == [f"query {i}" for i in expected]
    unshuffled = make_retrieval_dataset(a, n_passages=2, do_shuffle=True, seed=1)
    assert unshuffled.with_format(None)["_row"] == list(range(10))
    # Evaluation ignores the training window.
    assert len(make_retrieval_dataset(a, data_type="eval", max_train_samples=3)) == 10


def test_argument_errors(tmp_path):
    a = str(nemo_inline(tmp_path / "a.jsonl"))
    with pytest.raises(ConfigError, match="data_type: got 'test'; expected one of train, eval"):
        make_retrieval_dataset(a, data_type="test")
    with pytest.raises(ConfigError, match=r"data_dir_list\[0\]: unknown field\(s\) \['samples'\]"):
        make_retrieval_dataset([{"path": a, "samples": 3}])
    with pytest.raises(ConfigError, match="num_samples: got -1"):
        make_retrieval_dataset([{"path": a, "num_samples": -1}])
    with pytest.raises(ConfigError, match="data_dir_list: required"):
        make_retrieval_dataset(None)
    with pytest.raises(DataError, match="not found"):
        make_retrieval_dataset(str(tmp_path / "missing.jsonl"))


def test_missing_negatives_is_an_error_naming_the_line(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"query": "q", "pos_doc": "p", "neg_doc": None}])
    ds = make_retrieval_dataset(str(path), n_passages=2)
    with pytest.raises(DataError, match=r"t\.jsonl:1: neg_doc: no negatives"):
        ds[0]
    assert make_retrieval_dataset(str(path), n_passages=1)[0]["doc_text"] == ["p"]


def test_image_documents_and_use_text_in_document(tmp_path):
    path = write_jsonl(
        tmp_path / "mm.jsonl",
        [
            {
                "query": "q",
                "pos_doc": [{"text": " caption ", "image": "img.png"}],
                "neg_doc": [{"text": "plain"}],
            }
        ],
    )
    without = make_retrieval_dataset(str(path), n_passages=2)[0]
    assert without["doc_text"] == ["", "plain"] and without["doc_image"] == ["img.png", ""]
    assert make_retrieval_dataset(str(path), n_passages=2, use_text_in_document=True)[0]["doc_text"] == [
        "caption",
        "plain",
    ]


# -- the NeMo YAML data block through densetune.config ---------------------------------------------------


def test_shipped_config_targets_accept_their_keys():
    cfg = load_yaml(CONFIG)["dataloader"]
    for key, node in (("dataloader.dataset", cfg["dataset"]), ("dataloader.collate_fn", cfg["collate_fn"])):
        target = locate(node["_target_"])
        check_arguments(target, {k: v for k, v in node.items() if k != "_target_"}, key)
    assert locate("densetune.data.RetrievalBiencoderCollator") is locate(
        "densetune.data.collators.BiEncoderCollator"
    )
    # The names moved to densetune.compat; saved configs naming the old paths still load the same objects
    for name in ("RetrievalDataset", "SameDatasetTrainDataset"):
        here = locate(f"densetune.compat.llm_embedder.{name}")
        for old in ("densetune.data.flag_compat", "densetune.data.compat", "densetune.data"):
            assert locate(f"{old}.{name}") is here
    here = locate("densetune.compat.nemo_automodel.make_retrieval_dataset")
    assert locate("densetune.data.compat.make_retrieval_dataset") is here
    assert locate("densetune.data.make_retrieval_dataset") is here


def test_yaml_stateful_dataloader_batches_and_mid_epoch_resume(tmp_path, minilm_tokenizer):
    data = nemo_inline(tmp_path / "train.jsonl", 10)
    cfg = apply_overrides(
        load_yaml(CONFIG), [f"dataloader.dataset.data_dir_list=[{data}]", "dataloader.batch_size=3"]
    )
    node = cfg["dataloader"]
    collate = instantiate(node["collate_fn"], "dataloader.collate_fn", tokenizer=minilm_tokenizer)

    def build():
        torch.manual_seed(0)  # the loader's shuffle draws its seed from torch's RNG
        return instantiate(node, "dataloader", collate_fn=collate)

    loader = build()
    assert type(loader).__name__ == "StatefulDataLoader" and len(loader) == 4
    batches = list(loader)
    assert [b["q_input_ids"].shape[0] for b in batches] == [3, 3, 3, 1]
    first = batches[0]
    assert first["d_input_ids"].shape[0] == 9 and first["d_input_ids"].shape[1] % 8 == 0
    assert first["labels"].tolist() == [0, 0, 0]
    # Prefixes from YAML ("query:" / "passage:"), positive first in every group of 3.
    q0 = minilm_tokenizer.decode(first["q_input_ids"][0], skip_special_tokens=True)
    i = int(q0.split()[-1])
    assert q0 == f"query : query {i}"
    assert minilm_tokenizer.decode(first["d_input_ids"][0], skip_special_tokens=True) == f"passage : pos {i}"
    assert first["passage_doc_ids"][0].item() == doc_id_to_int64(text_doc_id(f"pos {i}"))

    # Resume mid-epoch: a fresh loader restored from the state after two batches yields the remaining two.
    loader = build()
    it = iter(loader)
    seen = [next(it), next(it)]
    state = loader.state_dict()
    rest = list(it)
    resumed = build()
    resumed.load_state_dict(state)
    again = list(resumed)
    assert len(again) == len(rest) == 2
    for a, b in zip(again, rest):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    order = [str(b["q_input_ids"][:, 1:6].tolist()) for b in seen + rest]
    assert len(set(order)) == 4  # four different batches: the epoch continued, it did not restart


# -- LLM-Embedder: RetrievalDataset ------------------------------------------------------------------------


def llm_rows() -> list[dict]:
    return [
        {
            "query": "q0",
            "task": "qa",
            "pos": ["p0"],
            "neg": ["n0a", "n0b", "n0c"],
            "teacher_scores": [0.9, 0.1, 0.5, 0.3],
        },
        {"query": "q1", "task": "qa", "pos": ["p1"], "neg": ["n1a"], "teacher_scores": [0.2, 0.19]},
        {"query": "q2", "task": "qa", "pos": ["p2"], "neg": [], "teacher_scores": [0.8]},
        {
            "query": "q3",
            "task": "chat",
            "pos": [],
            "neg": [],
            "history": ["h1", "h2", "h3"],
            "teacher_scores": [0.1, 0.7, 0.3],
        },
    ]


def test_train_process_fn_on_a_datasets_map():
    import datasets

    rows = [{"history": None, **row} for row in llm_rows()]  # from_list takes its columns from the first row
    table = datasets.Dataset.from_list(rows)
    fn = RetrievalDataset.get_train_process_fn(
        train_group_size=3,
        select_positive="teacher",
        select_negative="teacher+",
        teacher_scores_margin=0.05,
        instruction={"query": "Q: ", "key": "K: "},
    )
    out = table.map(fn, batched=True, with_indices=True, remove_columns=table.column_names)
    # q1 spans 0.01 < margin, q2 has no negatives: both dropped; q0 and the history row remain.
    assert out["query"] == ["Q: q0", "Q: q3"]
    assert out[0]["key"] == ["K: p0", "K: n0b", "K: n0c"] and out[0]["teacher_scores"] == [0.9, 0.5, 0.3]
    # History row: the best-scored history entry is the positive; the rest (tiled) are negatives.
    assert out[1]["key"][0] == "K: h2" and out[1]["teacher_scores"][0] == 0.7
    assert sorted(out[1]["key"][1:]) == ["K: h1", "K: h3"]
    single = fn(rows[0], 0)
    assert single["query"] == "Q: q0" and fn(rows[2], 2) is None


def test_train_process_fn_random_negatives_tile_and_stable_distill():
    fn = RetrievalDataset.get_train_process_fn(
        train_group_size=5, select_negative="random", stable_distill=True
    )
    row = llm_rows()[0]
    out = fn(row, 0)
    assert len(out["key"]) == 5 and out["key"][0] == "p0"
    assert out["teacher_scores"][1:] == sorted(out["teacher_scores"][1:], reverse=True)
    assert fn(row, 0) == out  # seeded: the same row index gives the same draw


def test_prepare_train_dataset_ranges_upsampling_and_task_config(tmp_path):
    qa = write_jsonl(tmp_path / "msmarco" / "train.jsonl", llm_rows()[:2])
    chat = write_jsonl(tmp_path / "msc" / "train.jsonl", [llm_rows()[3]] * 2)
    dataset, ranges = RetrievalDataset.prepare_train_dataset(
        [str(qa), str(chat), str(qa)],
        config=TASK_CONFIG["llm-embedder"],
        train_group_size=2,
        add_instruction=True,
        use_train_config=True,
    )
    assert ranges == {"msmarco": (0, 2), "msc": (2, 4), "msmarco_1": (4, 6)}
    assert len(dataset) == 6 and dataset.column_names == ["query", "key", "task", "teacher_scores"]
    qa_inst = TASK_CONFIG["llm-embedder"]["instruction"]["qa"]
    assert dataset[0]["query"] == qa_inst["query"] + "q0" and dataset[0]["key"][0] == qa_inst["key"] + "p0"
    # chat's training config selects the positive by teacher score (h2).
    chat_inst = TASK_CONFIG["llm-embedder"]["instruction"]["chat"]
    assert dataset[2]["key"][0] == chat_inst["key"] + "h2" and dataset[2]["task"] == "chat"
    assert RetrievalDataset.prepare_train_dataset(None) == (None, None)
    with pytest.raises(ConfigError, match="no entry for task 'qa'"):
        RetrievalDataset.prepare_train_dataset(str(qa), config={"instruction": {}}, add_instruction=True)


def test_prepare_train_dataset_glob_and_max_sample_num(tmp_path):
    rows = [{"query": f"q{i}", "task": "qa", "pos": [f"p{i}"], "neg": ["n"]} for i in range(5)]
    write_jsonl(tmp_path / "nq" / "train.jsonl", rows)
    dataset, ranges = RetrievalDataset.prepare_train_dataset(
        str(tmp_path / "*" / "train.jsonl"), max_sample_num=2
    )
    assert ranges == {"nq": (0, 2)} and dataset["query"] == ["q3", "q4"]  # the seed keeps the last ones
    assert dataset[0]["teacher_scores"] is None


def test_prepare_eval_dataset(tmp_path):
    path = write_jsonl(
        tmp_path / "eval.jsonl",
        [
            {"query": "a", "pos": ["p"], "neg": ["n1", "n2"], "task": "qa"},
            {"query": "b", "query_id": 7, "key": ["k1", "k2"], "key_index": [3, 4], "task": "qa"},
        ],
    )
    retrieve = RetrievalDataset.prepare_eval_dataset(str(path), instruction={"query": "Q ", "key": "K "})
    assert (
        retrieve["query"] == ["Q a", "Q b"]
        and retrieve["query_id"] == [0, 7]
        and "key" not in retrieve.column_names
    )
    rerank = RetrievalDataset.prepare_eval_dataset(str(path), eval_method="rerank")
    assert rerank[0]["key"] == ["p", "n1", "n2"] and rerank[0]["key_index"] == [0, 1, 2]
    assert rerank[1]["key"] == ["k1", "k2"] and rerank[1]["key_index"] == [3, 4]
    with pytest.raises(ConfigError, match="eval_method"):
        RetrievalDataset.prepare_eval_dataset(str(path), eval_method="score")


def test_prepare_corpus(tmp_path):
    path = write_jsonl(
        tmp_path / "corpus.jsonl", [{"title": "Mars", "text": "is red"}, {"title": "Venus", "text": "is hot"}]
    )
    corpus = RetrievalDataset.prepare_corpus(str(path), instruction={"query": "", "key": "Doc: "})
    assert corpus[0] == {"content": "Doc: Mars is red"}
    assert corpus[0:2]["content"] == ["Doc: Mars is red", "Doc: Venus is hot"]
    with pytest.raises(DataError, match="needs \\['body'\\]"):
        RetrievalDataset.prepare_corpus(str(path), key_template="{body}")


# -- LLM-Embedder: SameDatasetTrainDataset -----------------------------------------------------------------


def test_same_dataset_batches_are_one_task_and_sliced_per_process(caplog, minilm_tokenizer):
    import datasets

    from densetune.data.flag_collators import RetrievalDataCollator

    rows = [{"query": f"a{i}", "key": [f"pa{i}", "n"], "task": "a"} for i in range(10)]
    rows += [{"query": f"b{i}", "key": [f"pb{i}", "n"], "task": "b"} for i in range(7)]
    dataset = datasets.Dataset.from_list(rows)
    ranges = {"a": (0, 10), "b": (10, 17)}
    with caplog.at_level(logging.WARNING):
        ranks = [
            SameDatasetTrainDataset(
                dataset, ranges, 2, seed=3, organize_method="epoch", process_index=r, num_processes=2
            )
            for r in range(2)
        ]
        assert len(ranks[0]) == len(ranks[1]) == 2 + 1  # a: 2 global batches of 4, b: 1 (3 left out)
    assert "drop" in caplog.text.lower()  # incomplete global batches are dropped with a warning
    for step in range(len(ranks[0])):
        parts = [r.batch_indices(step) for r in ranks]
        assert len(parts[0]) == len(parts[1]) == 2 and not set(parts[0]) & set(parts[1])
        tasks = {rows[i]["task"] for p in parts for i in p}
        assert len(tasks) == 1
    item = ranks[0][0]
    assert isinstance(item, dict) and len(item["query"]) == 2  # the seed's dataset[batch_indices]
    # An index past the epoch continues into the next one (the seed refreshed its epoch when it ran out).
    assert ranks[0].batch_indices(3) == (ranks[0].set_epoch(1), ranks[0].batch_indices(0))[1]
    ranks[0].set_epoch(0)
    collated = RetrievalDataCollator(minilm_tokenizer, inbatch_same_dataset=True)([item])
    assert collated["query"]["input_ids"].shape[0] == 2 and collated["key"]["input_ids"].shape[0] == 4
    # Plain lists work too.
    assert SameDatasetTrainDataset(rows, ranges, 4, seed=0, organize_method="epoch")[0][0]["task"] in (
        "a",
        "b",
    )


def test_reexports_and_lazy_import():
    import densetune.data as data

    assert data.TASK_CONFIG is TASK_CONFIG and data.get_query_prompt is get_query_prompt
    assert get_query_prompt("q", "p", True) == "<instruct>p\n<query>q"
    assert sorted(data.__all__) == sorted(data._EXPORTS)
    for name in data.__all__:
        assert getattr(data, name) is not None
    with pytest.raises(AttributeError):
        data.no_such_name  # noqa: B018
    code = "import sys, densetune.data; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- NeMo Automodel's collator helpers ----------------------------------------------------------------------


def test_merge_batch_dict_and_convert_dict_to_list_as_upstream(minilm_tokenizer):
    from densetune.compat.nemo_automodel import BiEncoderCollator, _convert_dict_to_list, _merge_batch_dict

    q = {"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1], [1]]}
    d = {"input_ids": [[5], [6, 7], [8], [9]], "attention_mask": [[1], [1, 1], [1], [1]]}
    merged = _merge_batch_dict(q, d, train_n_passages=2)
    assert merged == {
        "q_input_ids": [[1, 2], [3]],
        "q_attention_mask": [[1, 1], [1]],
        "d_input_ids": [[[5], [6, 7]], [[8], [9]]],
        "d_attention_mask": [[[1], [1, 1]], [[1], [1]]],
    }
    rows = _convert_dict_to_list(merged)
    assert rows[1] == {
        "q_input_ids": [3],
        "q_attention_mask": [1],
        "d_input_ids": [[8], [9]],
        "d_attention_mask": [[1], [1]],
    }
    assert _convert_dict_to_list({"a": [1, 2], "b": [3, 4]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    # upstream calls them as methods of the collator, with keyword arguments
    collate = BiEncoderCollator(minilm_tokenizer)
    assert collate._merge_batch_dict(query_batch_dict=q, doc_batch_dict=d, train_n_passages=2) == merged
    assert collate._convert_dict_to_list(merged) == rows


# -- seed 000's documented usage: a real datasets.Dataset --------------------------------------------------


def test_seed_usage_a_datasets_dataset_feeding_the_collator(minilm_tokenizer):
    import pickle

    import datasets

    from densetune.compat.nemo_automodel import RetrievalBiencoderCollator

    examples = REPO / "examples"
    ds = make_retrieval_dataset(
        data_dir_list=[str(examples / "flag.jsonl")],  # what configs/nemo_dataloader.yaml reads
        data_type="train",
        train_n_passages=3,
        do_shuffle=True,
        use_dataset_instruction=False,
    )
    assert isinstance(ds, datasets.Dataset) and ds.cache_files  # Arrow, memory-mapped from a cache file
    assert ds.column_names == ["question_id", "question", "corpus_id", "pos_doc", "neg_doc", "_row"]
    item = ds[0]
    assert list(item) == [
        "question",
        "doc_text",
        "doc_image",
        "doc_id",
        "query_instruction",
        "passage_instruction",
    ]
    assert len(item["doc_text"]) == len(item["doc_image"]) == 3 and item["doc_image"] == ["", "", ""]
    # corpus-id rows resolve their documents from the corpus (one of the example's records has no negatives)
    by_id = make_retrieval_dataset(str(examples / "corpus_id" / "train.json"), train_n_passages=1)
    last = by_id[len(by_id) - 1]
    assert last["doc_text"][0] and last["doc_id"][0] == by_id.with_format(None)[len(by_id) - 1]["pos_doc"][0]
    # the datasets API works and keeps the transform
    assert ds.select([1, 0])[1] == item
    assert (
        len(ds.shuffle(seed=0)) == len(ds)
        and ds.with_format(None).filter(lambda r: r["corpus_id"] == "__inline__").num_rows == 3
    )
    mapped = ds.with_format(None).map(lambda r: {"n_neg": len(r["neg_doc"])})
    assert sorted(mapped["n_neg"]) == [1, 2, 2]
    # it pickles (DataLoader workers) and feeds the seed's collator
    again = pickle.loads(pickle.dumps(ds))
    assert again[2] == ds[2]
    collate = RetrievalBiencoderCollator(
        minilm_tokenizer,
        q_max_len=512,
        p_max_len=512,
        query_prefix="query:",
        passage_prefix="passage:",
        pad_to_multiple_of=8,
    )
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)))
    assert batch["q_input_ids"].shape[0] == 2 and batch["d_input_ids"].shape[0] == 6
    assert batch["d_input_ids"].shape[1] % 8 == 0


def test_shuffle_window_selects_nemo_automodels_rows(tmp_path):
    import datasets

    path = nemo_inline(tmp_path / "a.jsonl", 30)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for seed, offset, size in ((42, 0, 10), (7, 5, 12), (3, 25, 10)):
        ours = make_retrieval_dataset(
            str(path),
            n_passages=2,
            do_shuffle=True,
            seed=seed,
            max_train_samples=size,
            train_data_select_offset=offset,
        )
        # NeMo Automodel: Dataset.from_list(raw records).shuffle(seed).select(range(offset, min(offset+size, n)))
        theirs = datasets.Dataset.from_list(records).shuffle(seed=seed)
        theirs = theirs.select(range(offset, min(offset + size, len(theirs))))
        assert [ours[i]["question"] for i in range(len(ours))] == theirs["query"]


def test_set_epoch_cycles_positives_and_negatives_stay_in_file_order(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl", [{"query": "q", "pos_doc": ["p0", "p1"], "neg_doc": ["n0", "n1", "n2"]}]
    )
    ds = make_retrieval_dataset(str(path), n_passages=3, cycle_positive_docs=True)
    assert ds[0]["doc_text"] == ["p0", "n0", "n1"]
    ds.set_epoch(1)
    assert ds[0]["doc_text"] == ["p1", "n0", "n1"]
    ds.set_epoch(2)
    assert ds[0]["doc_text"] == ["p0", "n0", "n1"]
