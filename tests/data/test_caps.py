"""DENSETUNE_MAX_QUERIES / DENSETUNE_MAX_CORPUS (densetune/caps.py): a capped read keeps what it documents,
says so on stderr, and never shares a cache with a full read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densetune.data.beir import iter_beir_items, load_beir
from densetune.data.corpus import load_corpus
from densetune.data.trec import read_qrels
from densetune.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _beir(root: Path) -> Path:
    """10 documents d0..d9; train judges q0 -> d8, q1 -> d1, q2 -> d9; test judges q3 -> d7, q4 -> d2."""
    root.mkdir()
    rows = [{"_id": f"d{i}", "title": "", "text": f"passage {i}"} for i in range(10)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(5)]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (root / "qrels").mkdir()
    (root / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq0\td8\t1\nq1\td1\t1\nq2\td9\t1\n", encoding="utf-8"
    )
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq3\td7\t1\nq4\td2\t1\n")
    return root


def test_capped_beir_split_keeps_first_queries_and_their_documents(tmp_path, monkeypatch, capsys):
    beir = _beir(tmp_path / "mini")
    cache = tmp_path / "cache"
    monkeypatch.setenv("DENSETUNE_MAX_QUERIES", "2")
    monkeypatch.setenv("DENSETUNE_MAX_CORPUS", "3")
    assert read_qrels(beir / "qrels" / "train.tsv") == {"q0": {"d8": 1}, "q1": {"d1": 1}}
    corpus = load_corpus(beir, cache_dir=cache)
    # the first 3 rows and the judged documents of the kept queries (d8; d1, d2 are among the first 3; d7
    # of test's q3), in corpus order; q2's d9 is capped away with q2
    assert corpus.ids == ["d0", "d1", "d2", "d7", "d8"]
    err = capsys.readouterr().err
    assert "DENSETUNE_MAX_QUERIES=2: " in err and "keeps its first 2 of 3 queries" in err
    assert f"DENSETUNE_MAX_CORPUS=3: corpus {beir} keeps 5 of its 10 documents" in err
    # training on the capped split finds every positive
    data = load_beir(beir, "train", cache_dir=cache)
    examples = [item for item in iter_beir_items(data)]
    assert [ex.query_id for ex, _ in examples] == ["q0", "q1"]

    monkeypatch.delenv("DENSETUNE_MAX_QUERIES")
    monkeypatch.delenv("DENSETUNE_MAX_CORPUS")
    assert len(load_corpus(beir, cache_dir=cache)) == 10  # the capped cache does not serve a full read
    assert len(read_qrels(beir / "qrels" / "train.tsv")) == 3
    assert capsys.readouterr().err == ""


def test_capped_corpus_file_keeps_its_first_rows(tmp_path, monkeypatch):
    beir = _beir(tmp_path / "mini")
    monkeypatch.setenv("DENSETUNE_MAX_CORPUS", "4")
    assert load_corpus(beir / "corpus.jsonl", cache_dir=tmp_path / "cache").ids == ["d0", "d1", "d2", "d3"]


def test_a_cap_that_is_not_a_positive_integer_names_the_variable(tmp_path, monkeypatch):
    beir = _beir(tmp_path / "mini")
    monkeypatch.setenv("DENSETUNE_MAX_QUERIES", "0")
    with pytest.raises(ConfigError, match="DENSETUNE_MAX_QUERIES"):
        read_qrels(beir / "qrels" / "test.tsv")


def test_batch_cap_covers_per_task_batch_sizes(monkeypatch, capsys):
    from densetune.train.config import load_config
    from densetune.train.loop import _cap_batch

    cfg = load_config(REPO / "configs" / "bge_icl_smollm2.yaml", [])
    monkeypatch.setenv("DENSETUNE_MAX_BATCH", "2")
    _cap_batch(cfg)
    assert cfg.train.batch_size == 2
    assert cfg.data.sampler["batch_size_by_task"] == {"sts": 2, "clustering": 2, "classification": 2}
    assert "data.sampler.batch_size_by_task.sts 8 -> 2" in capsys.readouterr().out
