"""``densetune rerank``: the top-k reordered by the reranker, the rest kept below in order; errors name the run line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from densetune.cli import main as cli
from densetune.data.trec import read_run

DOCS = {
    "d1": ("Cancer", "Mutations in genes that control cell division drive tumour growth."),
    "d2": ("", "The heart pumps blood through the body."),
    "d3": ("Sleep", "Sleep consolidates memory in the hippocampus."),
    "d4": ("", "Insulin lowers blood sugar."),
    "d5": ("Bones", "Vitamin D and calcium keep bones dense."),
    "d6": ("", "Aspirin lowers the risk of colorectal cancer."),
}
QUERIES = {"q1": "what causes cancer", "q2": "does sleep help memory"}
# qid -> [(doc, retrieval score)] in the run's order
RUN = {
    "q1": [("d2", 9.0), ("d6", 8.0), ("d1", 7.5), ("d4", 7.0), ("d5", 6.0)],
    "q2": [("d4", 5.0), ("d3", 4.0), ("d5", 3.0), ("d2", 2.0)],
}


def make_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for did, (title, text) in DOCS.items():
            f.write(json.dumps({"_id": did, "title": title, "text": text}) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text in QUERIES.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq2\td3\t1\r\n")
    return root


def write_run_file(path: Path, run: dict[str, list[tuple[str, float]]]) -> Path:
    lines = [f"{q} Q0 {d} {r} {s} bm25" for q, docs in run.items() for r, (d, s) in enumerate(docs, 1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ranking(run: dict[str, dict[str, float]], qid: str) -> list[str]:
    return [d for d, _ in sorted(run[qid].items(), key=lambda kv: -kv[1])]


def rerank(reranker_dir: str, run: Path, data: Path, out: Path, *extra: str) -> int:
    args = ["rerank", "--model", reranker_dir, "--run", str(run), "--data", str(data), "--out", str(out)]
    precision = [] if "--precision" in extra else ["--precision", "fp32"]  # compared with fp32 score_pairs
    return cli([*args, "--no-progress", *precision, *extra])


def test_top_k_reordered_by_the_reranker_and_the_rest_kept_below(tmp_path, reranker_dir, capsys):
    from densetune.models.crossencoder import CrossEncoder

    data = make_beir(tmp_path / "tiny")
    run = write_run_file(tmp_path / "run.txt", RUN)
    out = tmp_path / "reranked.txt"
    assert rerank(reranker_dir, run, data, out, "--top-k", "3", "--batch-size", "2") == 0
    summary = capsys.readouterr().out.strip()
    assert len(summary.splitlines()) == 1
    assert "top 3 of 2 queries (6 pairs)" in summary and "3 documents below the top 3" in summary
    assert "nDCG@10 (test)" in summary

    model = CrossEncoder.from_pretrained(reranker_dir).eval()
    new = read_run(out)
    for qid, docs in RUN.items():
        head = [d for d, _ in docs[:3]]
        texts = [f"{DOCS[d][0]} {DOCS[d][1]}" if DOCS[d][0] else DOCS[d][1] for d in head]
        expected = model.score_pairs([QUERIES[qid]] * 3, texts)
        by_model = [head[i] for i in torch.argsort(expected, descending=True, stable=True).tolist()]
        assert ranking(new, qid) == by_model + [d for d, _ in docs[3:]]
        for d, s in zip(head, expected.tolist()):
            assert new[qid][d] == pytest.approx(s, abs=1e-5)
    lines = out.read_text().splitlines()
    assert lines[0].split()[3] == "1" and lines[0].split()[5] == "densetune-rerank"


def test_top_k_larger_than_the_run_reranks_everything(tmp_path, reranker_dir, capsys):
    data = make_beir(tmp_path / "tiny")
    run = write_run_file(tmp_path / "run.txt", RUN)
    out = tmp_path / "all.txt"
    assert rerank(reranker_dir, run, data, out, "--split", "dev") == 0  # no dev qrels: no metrics
    summary = capsys.readouterr().out
    assert "(9 pairs)" in summary and "0 documents below" in summary and "nDCG" not in summary
    assert {q: set(d) for q, d in read_run(out).items()} == {
        q: {d for d, _ in docs} for q, docs in RUN.items()
    }


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), lines
    assert sum(line.startswith("error: ") for line in lines) == 1
    return lines[-1]


def test_unknown_ids_name_the_run_file_line_and_id(tmp_path, reranker_dir, capsys):
    data = make_beir(tmp_path / "tiny")
    bad = dict(RUN, q2=[("d4", 5.0), ("d99", 4.5), ("d3", 4.0)])
    run = write_run_file(tmp_path / "run.txt", bad)
    assert rerank(reranker_dir, run, data, tmp_path / "o.txt") == 1
    err = error_line(capsys)
    assert f"{run}:7: docid:" in err and "'d99'" in err and "not in the corpus" in err
    run = write_run_file(tmp_path / "run2.txt", {"q1": RUN["q1"], "q7": [("d1", 1.0)]})
    assert rerank(reranker_dir, run, data, tmp_path / "o.txt") == 1
    err = error_line(capsys)
    assert f"{run}:6: qid:" in err and "'q7'" in err
    assert not (tmp_path / "o.txt").exists()


def test_missing_files_are_one_line_errors(tmp_path, reranker_dir, capsys):
    data = make_beir(tmp_path / "tiny")
    run = write_run_file(tmp_path / "run.txt", RUN)
    assert rerank(reranker_dir, tmp_path / "nope.txt", data, tmp_path / "o.txt") == 1
    assert "nope.txt" in error_line(capsys)
    assert rerank(reranker_dir, run, tmp_path / "no_dir", tmp_path / "o.txt") == 1
    assert "no_dir" in error_line(capsys)
    assert rerank(str(tmp_path / "no_model"), run, data, tmp_path / "o.txt") == 1
    assert "no_model" in error_line(capsys)
    assert rerank(reranker_dir, run, data, tmp_path / "o.txt", "--top-k", "0") == 1
    assert "--top-k must be >= 1" in error_line(capsys)
