"""RetrievalTrainDataset: store + selector -> Groups with texts, exact length, sampler inputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from densetune.data.collators import BiEncoderCollator
from densetune.data.dataset import RetrievalTrainDataset
from densetune.data.groups import GroupSelector
from densetune.data.records import doc_id_to_int64, text_doc_id
from densetune.data.samplers import NoDuplicatesBatchSampler, SameTaskBatchSampler
from densetune.data.store import load_examples


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSETUNE_CACHE", str(tmp_path / "cache"))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def corpus_id_data(root: Path) -> Path:
    """A NeMo corpus-id training file over a 6-document corpus with titles; q3 has no negatives."""
    corpus = root / "wiki"
    corpus.mkdir(parents=True)
    (corpus / "merlin_metadata.json").write_text(
        json.dumps({"class": "TextQADataset", "corpus_id": "wiki", "query_instruction": "Find:"})
    )
    write_jsonl(
        corpus / "docs.jsonl", [{"id": f"w{i}", "text": f"text of w{i}", "title": f"T{i}"} for i in range(6)]
    )
    data = [
        {
            "question_id": "q1",
            "question": "first?",
            "corpus_id": "wiki",
            "pos_doc": ["w0"],
            "neg_doc": ["w1", "w2", "w3"],
        },
        {
            "question_id": "q2",
            "question": "second question?",
            "corpus_id": "wiki",
            "pos_doc": ["w4", "w5"],
            "neg_doc": ["w1"],
        },
        {"question_id": "q3", "question": "third?", "corpus_id": "wiki", "pos_doc": ["w2"], "neg_doc": []},
    ]
    path = root / "train.json"
    path.write_text(json.dumps({"corpus": [{"path": "wiki"}], "data": data}))
    return path


def inline_data(root: Path) -> Path:
    return write_jsonl(
        root / "inline.jsonl",
        [
            {"query": "inline one", "pos_doc": "pos one", "neg_doc": ["neg a", "neg b"]},
            {"query": "inline two", "pos_doc": ["pos two"], "neg_doc": "neg c"},
        ],
    )


def test_items_are_groups_with_resolved_texts(tmp_path):
    store = load_examples([corpus_id_data(tmp_path), inline_data(tmp_path)])
    dataset = RetrievalTrainDataset(store, GroupSelector(3, positive="cycle", negative="cycle"))
    assert len(dataset) == 5 and dataset.indices is None and dataset.report["kept"] == 5
    g = dataset[0]
    assert g.query == "first?" and g.query_id == "q1" and g.task == "wiki"
    assert [d.id for d in g.docs] == ["w0", "w1", "w2"]
    assert [d.text for d in g.docs] == ["text of w0", "text of w1", "text of w2"]
    assert g.docs[0].title == "T0" and g.query_instruction == "Find:"
    # Negatives wrap in file order; the positive rotates with the epoch (cycle).
    assert [d.id for d in dataset[1].docs] == ["w4", "w1", "w1"]
    dataset.set_epoch(1)
    assert [d.id for d in dataset[1].docs] == ["w5", "w1", "w1"]
    inline = dataset[3]
    assert [d.text for d in inline.docs] == ["pos one", "neg a", "neg b"]
    assert inline.docs[0].id == text_doc_id("pos one")


def test_getitems_resolves_a_batch_like_single_items(tmp_path):
    store = load_examples([corpus_id_data(tmp_path), inline_data(tmp_path)])
    dataset = RetrievalTrainDataset(store, GroupSelector(3, negative="cycle"))
    dataset.set_epoch(2)
    batch = dataset.__getitems__([4, 0, 1, 3])
    assert batch == [dataset[4], dataset[0], dataset[1], dataset[3]]
    with pytest.raises(IndexError, match="out of range"):
        dataset[5]


def test_cycle_mode_errors_name_the_record(tmp_path):
    store = load_examples([corpus_id_data(tmp_path)])
    dataset = RetrievalTrainDataset(store, GroupSelector(3, negative="cycle"))
    assert len(dataset) == 3  # NeMo rules: nothing is dropped; a record without negatives is an error
    with pytest.raises(Exception, match=r"train\.json:\d+: neg_doc: no negatives"):
        dataset[2]


def test_dropped_examples_are_filtered_at_construction_and_reported(tmp_path, caplog):
    store = load_examples([corpus_id_data(tmp_path), inline_data(tmp_path)])
    selector = GroupSelector(3, negative="random", seed=7)
    with caplog.at_level(logging.WARNING, logger="densetune.data"):
        dataset = RetrievalTrainDataset(store, selector)
    assert len(dataset) == 4 and dataset.indices.tolist() == [0, 1, 3, 4]
    assert dataset.report == {
        "examples": 5,
        "kept": 4,
        "filtered_min": 0,
        "filtered_margin": 0,
        "no_negatives": 1,
    }
    assert "left out 1 of 5 training examples (no_negatives: 1)" in caplog.text
    assert selector.stats["no_negatives"] == 0  # the scan does not count into the training stats
    assert [g.query for g in dataset.__getitems__(range(4))] == [
        "first?",
        "second question?",
        "inline one",
        "inline two",
    ]
    # Epoch-independent: every epoch yields a group for every kept item.
    for epoch in range(3):
        dataset.set_epoch(epoch)
        assert all(len(g.docs) == 3 for g in dataset.__getitems__(range(4)))
    assert dataset.tasks() == ["wiki", "wiki", "inline", "inline"]


def _decoded_rows(monkeypatch) -> list[int]:
    """A counter of the examples the store decodes from now on (the work a dataset start does per example)."""
    from densetune.data.store import ExampleStore

    counted = [0]
    decode = ExampleStore._decode

    def counting(self, part, start, stop, resolve):
        counted[0] += stop - start
        return decode(self, part, start, stop, resolve)

    monkeypatch.setattr(ExampleStore, "_decode", counting)
    return counted


@pytest.mark.parametrize("n", [50, 500])
def test_a_start_from_a_built_cache_decodes_no_example(tmp_path, monkeypatch, n):
    # Every 10th record has no negatives: negative="random" drops it, so the selector can drop and the
    # dataset must know which examples it leaves out; the second start finds that next to the cache.
    records = [
        {"query": f"q{i}", "pos_doc": f"p{i}", "neg_doc": [] if i % 10 == 3 else [f"n{i}", f"m{i}"]}
        for i in range(n)
    ]
    path = write_jsonl(tmp_path / "train.jsonl", records)
    decoded = _decoded_rows(monkeypatch)
    first = RetrievalTrainDataset(load_examples([path]), GroupSelector(3, negative="random", seed=1))
    assert decoded[0] == n  # the first start scans every example once
    decoded[0] = 0
    again = RetrievalTrainDataset(load_examples([path]), GroupSelector(3, negative="random", seed=2))
    assert decoded[0] == 0  # the cached start: no example decoded, whatever n
    assert len(again) == len(first) == n - n // 10 and again.indices.tolist() == first.indices.tolist()
    assert again.report == first.report and again.report["no_negatives"] == n // 10
    # Other drop settings are another key: scanned again, with their own result.
    other = RetrievalTrainDataset(load_examples([path]), GroupSelector(2, negative="first"))
    assert decoded[0] == n and other.report == first.report


def test_pages_are_released_as_a_pass_reads_and_groups_stay_the_same(tmp_path, monkeypatch):
    import densetune.data.dataset as dataset_mod
    from densetune.data.store import ExampleStore

    records = [{"query": f"q{i}", "pos_doc": f"p{i}", "neg_doc": [f"n{i}", f"m{i}"]} for i in range(30)]
    path = write_jsonl(tmp_path / "train.jsonl", records)
    expected = RetrievalTrainDataset(load_examples([path]), GroupSelector(3, negative="random", seed=3))
    expected_groups = expected.__getitems__(range(30))
    released = []
    real = ExampleStore.release_pages
    monkeypatch.setattr(ExampleStore, "release_pages", lambda self: released.append(1) or real(self))
    monkeypatch.setattr(dataset_mod, "_RELEASE_EVERY", 4)
    dataset = RetrievalTrainDataset(load_examples([path]), GroupSelector(3, negative="random", seed=3))
    groups = [g for start in range(0, 30, 3) for g in dataset.__getitems__(range(start, start + 3))]
    assert groups == expected_groups
    assert len(released) == 5  # re-mapped every 4+ items read: after items 6, 12, 18, 24 and 30


def test_teacher_score_filters(tmp_path):
    path = write_jsonl(
        tmp_path / "flag.jsonl",
        [
            {"query": "a", "pos": ["p"], "neg": ["n1", "n2"], "pos_scores": [0.9], "neg_scores": [0.1, 0.2]},
            {"query": "b", "pos": ["p"], "neg": ["n1", "n2"], "pos_scores": [0.3], "neg_scores": [0.2, 0.25]},
            {"query": "c", "pos": ["p"], "neg": ["n1", "n2"], "pos_scores": [0.8], "neg_scores": [0.75, 0.7]},
        ],
    )
    store = load_examples([path])
    dataset = RetrievalTrainDataset(
        store, GroupSelector(3, negative="first", teacher_scores_min=0.5, teacher_scores_margin=0.2)
    )
    assert [dataset[i].query for i in range(len(dataset))] == ["a"]
    assert dataset.report["filtered_min"] == 1 and dataset.report["filtered_margin"] == 1
    assert dataset[0].scores == [0.9, 0.1, 0.2]


def test_sampler_inputs_align_with_kept_items(tmp_path):
    store = load_examples([corpus_id_data(tmp_path), inline_data(tmp_path)])
    dataset = RetrievalTrainDataset(store, GroupSelector(3, negative="random"))
    keys = dataset.doc_keys()
    assert len(keys) == len(dataset.lengths()) == len(dataset.tasks()) == len(dataset)
    assert dataset.lengths().tolist() == [
        len("first?"),
        len("second question?"),
        len("inline one"),
        len("inline two"),
    ]
    assert keys[1] == [
        doc_id_to_int64("\x00query\x00second question?"),
        doc_id_to_int64("w4"),
        doc_id_to_int64("w5"),
    ]
    assert keys[2][1] == doc_id_to_int64(text_doc_id("pos one"))
    # The samplers take them as they are.
    same_task = SameTaskBatchSampler(dataset.tasks(), 2, seed=0, drop_last=False)
    assert sorted(i for b in same_task for i in b) == [0, 1, 2, 3]
    assert all(len({dataset.tasks()[i] for i in b}) == 1 for b in same_task)
    no_dup = NoDuplicatesBatchSampler(keys, 2, seed=0)
    assert sorted(i for b in no_dup for i in b) == [0, 1, 2, 3]


def test_dataloader_with_collator_end_to_end(tmp_path, minilm_tokenizer):
    store = load_examples([corpus_id_data(tmp_path), inline_data(tmp_path)])
    dataset = RetrievalTrainDataset(store, GroupSelector(3, negative="random"))
    loader = DataLoader(
        dataset,
        batch_sampler=BatchSampler(SequentialSampler(dataset), 2, drop_last=False),
        collate_fn=BiEncoderCollator(minilm_tokenizer, query_prefix="query:", pad_to_multiple_of=8),
    )
    batches = list(loader)
    assert [b["q_input_ids"].shape[0] for b in batches] == [2, 2]
    first = batches[0]
    assert first["d_input_ids"].shape[0] == 6 and first["passage_doc_ids"].shape == (6,)
    # Titles are part of the text the model sees ("T0 text of w0").
    ids = minilm_tokenizer("T0 text of w0")["input_ids"]
    assert first["d_input_ids"][0][: len(ids)].tolist() == ids
    assert first["passage_doc_ids"][0].item() == doc_id_to_int64("w0")


def test_the_prefilter_scan_in_worker_processes_equals_one_process(tmp_path, monkeypatch):
    import densetune.data.dataset as dataset_mod

    records = [
        {
            "query": f"q{i}",
            "pos_doc": f"p{i}",
            "neg_doc": [] if i % 7 == 3 else [f"n{i}", f"p{i}"][: 1 + i % 2],
        }
        for i in range(300)
    ]
    path = write_jsonl(tmp_path / "train.jsonl", records)
    monkeypatch.setattr(dataset_mod, "_SCAN_RANGE", 32)  # ten ranges
    results = {}
    for workers in (1, 2):
        monkeypatch.setattr(dataset_mod, "data_workers", lambda workers=workers: workers)
        store = load_examples([path], cache_dir=tmp_path / f"cache{workers}")
        dataset = RetrievalTrainDataset(store, GroupSelector(3, negative="random", seed=1), exclude=[5])
        results[workers] = (dataset.indices.tolist(), dataset.report, dataset.task_report)
    assert results[2] == results[1]
    assert results[1][1]["no_negatives"] == len([i for i in range(300) if i % 7 == 3]) + 1  # + excluded row 5
