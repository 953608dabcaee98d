"""The main job end to end on a small slice of the standard-library set, and its data builder."""

from __future__ import annotations

import json

import pytest

from densetune.cli import main as cli_main
from densetune.data.pydocs import build_pydocs_beir
from densetune.data.trec import read_qrels


@pytest.fixture(scope="module")
def small_pydocs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pydocs")
    counts = build_pydocs_beir(out, max_queries=60, max_distractors=20)
    return out, counts


def test_pydocs_is_deterministic_and_splits_without_leakage(small_pydocs, tmp_path):
    out, counts = small_pydocs
    again = tmp_path / "again"
    assert build_pydocs_beir(again, max_queries=60, max_distractors=20) == counts
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        assert (out / name).read_bytes() == (again / name).read_bytes()
    train, test = read_qrels(out / "qrels/train.tsv"), read_qrels(out / "qrels/test.tsv")
    assert counts["train"] == len(train) and counts["test"] == len(test) and counts["test"] > 0
    assert not set(train) & set(test)  # no query in both splits
    queries = [json.loads(line) for line in (out / "queries.jsonl").open()]
    docs = {json.loads(line)["_id"]: json.loads(line) for line in (out / "corpus.jsonl").open()}
    assert len(docs) == counts["docs"] == 60 + 20
    texts = [q["text"] for q in queries]
    assert len(set(texts)) == len(texts)  # ambiguous summaries were dropped
    for qrels in (train, test):
        for rels in qrels.values():
            (did,) = rels
            assert did in docs and docs[did]["text"] not in texts  # the passage is not the query text


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_writes_a_report(small_pydocs, tmp_path, minilm_path):
    from densetune.quickstart import run_quickstart

    data, _ = small_pydocs
    out = tmp_path / "qs"
    result = run_quickstart(
        data=str(data),
        model=minilm_path,
        out=out,
        device="cpu",
        max_steps=2,
        batch_size=4,
        negatives=2,
        pool=4,
    )
    for key in ("ndcg@10", "mrr@10", "recall@100"):
        assert 0.0 <= result["before"][key] <= 1.0 and 0.0 <= result["after"][key] <= 1.0
    assert result["training"]["steps"] == 2
    assert (out / "train" / "model" / "modules.json").is_file()  # loads in sentence-transformers
    report = (out / "report.md").read_text()
    assert "| ndcg@10 |" in report and "metrics_before_after.png" in report
    assert (out / "metrics_before_after.png").stat().st_size > 1000
    assert (out / "train" / "training_curve.png").is_file()
    mined = [json.loads(line) for line in (out / "train_mined.jsonl").open()]
    assert mined and all(1 <= len(row["neg"]) <= 4 for row in mined)
    assert json.loads((out / "summary.json").read_text())["after"] == result["after"]


def test_quickstart_cli_rejects_bad_arguments_in_one_line(tmp_path, capsys):
    assert cli_main(["quickstart", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "BEIR directory" in err and "\n" not in err
    assert cli_main(["quickstart", "--negatives", "5", "--pool", "5"]) == 1
    assert "--pool" in capsys.readouterr().err
