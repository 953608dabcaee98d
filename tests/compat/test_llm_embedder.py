"""LLM-Embedder's data API (seed 001): the seed's usage example runs on the shipped example data.

The finer rules (selection modes, ranges, upsampling, eval and corpus preparation, same-task batches) are
tested in test_nemo_automodel.py, next to the NeMo Automodel names they share helpers with.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
from torch.utils.data import DataLoader

from densetune.compat.llm_embedder import (
    TASK_CONFIG,
    RetrievalDataCollator,
    RetrievalDataset,
    SameDatasetTrainDataset,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "llm_embedder"  # one directory per task


def test_seed_usage_example(minilm_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("DENSETUNE_CACHE", str(tmp_path / "cache"))
    config = TASK_CONFIG["llm-embedder"]
    dataset, indices_range = RetrievalDataset.prepare_train_dataset(
        data_file=str(EXAMPLES / "*" / "train.jsonl"),
        train_group_size=8,
        select_positive="teacher",
        select_negative="random",
        teacher_scores_min=0.5,
        stable_distill=True,
        add_instruction=True,
        config=config,
        use_train_config=True,
    )
    # a datasets.Dataset with the seed's columns; one index range per dataset (the parent directory's name)
    assert isinstance(dataset, datasets.Dataset)
    assert dataset.column_names == ["query", "key", "task", "teacher_scores"]
    assert sorted(indices_range) == ["chat", "convsearch", "icl", "lrlm", "qa", "tool"]
    for name, (start, end) in indices_range.items():
        rows = dataset.select(range(start, end))
        assert set(rows["task"]) == {name} and all(len(k) == 8 for k in rows["key"])
        inst = config["instruction"][name]
        assert rows[0]["query"].startswith(inst["query"]) and rows[0]["key"][0].startswith(inst["key"])
    # lrlm's training config (teacher_scores_margin 0.1) drops the five rows whose scores are flat
    start, end = indices_range["lrlm"]
    assert end - start == 25

    collator = RetrievalDataCollator(tokenizer=minilm_tokenizer, query_max_length=512, key_max_length=512)
    batches = SameDatasetTrainDataset(dataset, indices_range, batch_size=4, seed=42, organize_method="epoch")
    batch = next(iter(DataLoader(batches, batch_size=1, collate_fn=lambda x: x[0])))
    out = RetrievalDataCollator(
        tokenizer=minilm_tokenizer, query_max_length=512, key_max_length=512, inbatch_same_dataset=True
    )([batch])
    assert out["query"]["input_ids"].shape[0] == 4 and out["key"]["input_ids"].shape[0] == 4 * 8
    plain = collator([dataset[0], dataset[1]])
    assert plain["key"]["input_ids"].shape[0] == 16 and plain["teacher_scores"].shape == (2, 8)

    eval_file = tmp_path / "eval_data.json"
    eval_file.write_text(
        json.dumps(
            {
                "query": "how do I sort a list",
                "pos": ["sorted() returns a new list"],
                "neg": ["x"],
                "task": "qa",
            }
        )
        + "\n"
    )
    eval_dataset = RetrievalDataset.prepare_eval_dataset(
        data_file=str(eval_file), instruction=config["instruction"]["qa"], eval_method="retrieve"
    )
    assert eval_dataset[0]["query"] == config["instruction"]["qa"]["query"] + "how do I sort a list"
    corpus_file = tmp_path / "corpus.json"
    corpus_file.write_text(json.dumps({"title": "sorted", "text": "returns a new sorted list"}) + "\n")
    corpus = RetrievalDataset.prepare_corpus(
        data_file=str(corpus_file), key_template="{title}: {text}", instruction=config["instruction"]["qa"]
    )
    assert corpus[0]["content"] == config["instruction"]["qa"]["key"] + "sorted: returns a new sorted list"
