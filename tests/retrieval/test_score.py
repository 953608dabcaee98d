"""``densetune score``: teacher scores aligned with the documents, both output formats, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densetune.cli import main as cli

RECORDS = [
    {
        "query": "what causes cancer",
        "pos": ["mutations in genes that control division"],
        "neg": ["the heart", "sleep"],
    },
    {
        "query": "sleep and memory",
        "pos": ["sleep consolidates memory", "naps help recall"],
        "neg": ["insulin"],
    },
    {"query": "insulin", "pos": ["insulin lowers blood sugar"], "neg": []},
    {"query": "bone density", "pos": ["vitamin D and calcium"], "neg": ["malaria", "statins", "vaccines"]},
    {
        "query": "aspirin",
        "pos": ["aspirin lowers colorectal cancer risk"],
        "neg": ["antibiotics"],
        "prompt": "Retrieve",
    },
]


@pytest.fixture(scope="module")
def reranker(reranker_dir):
    from densetune.models.crossencoder import CrossEncoder

    return CrossEncoder.from_pretrained(reranker_dir).eval()


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def expected_scores(reranker, query: str, docs: list[str]) -> list[float]:
    return [reranker.score_pairs([query], [d])[0].item() for d in docs] if docs else []


def score(reranker_dir: str, data: Path, out: Path, *extra: str) -> int:
    """``densetune score`` in fp32 (the scores are compared with fp32 ``score_pairs``) unless ``extra`` says."""
    precision = [] if "--precision" in extra else ["--precision", "fp32"]
    return cli(
        [
            "score",
            "--model",
            reranker_dir,
            "--data",
            str(data),
            "--out",
            str(out),
            "--no-progress",
            *precision,
            *extra,
        ]
    )


def test_flag_output_has_aligned_scores(tmp_path, reranker_dir, reranker, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    out = tmp_path / "scored.jsonl"
    assert score(reranker_dir, data, out, "--chunk-size", "2", "--batch-size", "3") == 0
    summary = capsys.readouterr().out
    assert "scored 5 examples (13 pairs)" in summary and "pos_scores, neg_scores" in summary
    assert "teacher ranks a positive above every negative" in summary
    rows = read_jsonl(out)
    assert [r["query"] for r in rows] == [r["query"] for r in RECORDS]
    for row, rec in zip(rows, RECORDS):
        assert row["pos"] == rec["pos"] and row["neg"] == rec["neg"]
        assert row["pos_scores"] == pytest.approx(
            expected_scores(reranker, rec["query"], rec["pos"]), abs=1e-5
        )
        assert row["neg_scores"] == pytest.approx(
            expected_scores(reranker, rec["query"], rec["neg"]), abs=1e-5
        )
    assert rows[4]["prompt"] == "Retrieve"
    assert not (tmp_path / "scored.jsonl.partial").exists()
    # the data layer reads it back as FlagEmbedding data with teacher scores
    from densetune.data.formats import detect_format, iter_examples

    assert detect_format(out) == "flag"
    first = next(iter_examples(out))
    assert first.pos_scores == pytest.approx(rows[0]["pos_scores"])


def test_interrupted_run_resumes_to_identical_output(tmp_path, reranker_dir, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    whole = tmp_path / "whole.jsonl"
    assert score(reranker_dir, data, whole, "--chunk-size", "2") == 0
    out = tmp_path / "resumed.jsonl"
    assert score(reranker_dir, data, out, "--chunk-size", "2", "--stop-after-chunks", "1") == 130
    partial = tmp_path / "resumed.jsonl.partial"
    progress = json.loads((partial / "progress.json").read_text())
    assert not out.exists() and progress["chunks"] == 1 and progress["examples"] == 2
    # other settings than the partial work's: refused, with the fix
    capsys.readouterr()
    assert score(reranker_dir, data, out, "--chunk-size", "3") == 1
    err = error_line(capsys)
    assert "chunk_size: 2 then, 3 now" in err and "--restart" in err
    assert score(reranker_dir, data, out, "--chunk-size", "2") == 0
    captured = capsys.readouterr()
    assert "resuming: 2 examples (1 chunks)" in captured.err and "resumed after 2 examples" in captured.out
    assert out.read_bytes() == whole.read_bytes()
    assert not partial.exists()


def test_llm_embedder_output_and_history_rows(tmp_path, reranker_dir, reranker):
    records = [
        {
            "query": "q one",
            "pos": ["alpha beta"],
            "neg": ["gamma", "delta"],
            "task": "qa",
            "answers": ["alpha"],
        },
        {"query": "q two", "history": ["turn one", "turn two"], "teacher_scores": [0.0, 1.0], "task": "chat"},
    ]
    data = write_jsonl(tmp_path / "llm.jsonl", records)
    out = tmp_path / "llm_scored.jsonl"
    assert score(reranker_dir, data, out) == 0  # llm-embedder input: llm-embedder output by default
    rows = read_jsonl(out)
    assert set(rows[0]) == {"query", "pos", "neg", "teacher_scores", "task", "answers"}
    assert rows[0]["teacher_scores"] == pytest.approx(
        expected_scores(reranker, "q one", ["alpha beta", "gamma", "delta"]), abs=1e-5
    )
    assert rows[1]["history"] == ["turn one", "turn two"] and rows[1]["task"] == "chat"
    assert rows[1]["teacher_scores"] == pytest.approx(
        expected_scores(reranker, "q two", records[1]["history"]), abs=1e-5
    )
    # FlagEmbedding input written as LLM-Embedder on request
    flag = write_jsonl(tmp_path / "flag.jsonl", RECORDS[:2])
    assert score(reranker_dir, flag, tmp_path / "as_llm.jsonl", "--format", "llm-embedder") == 0
    row = read_jsonl(tmp_path / "as_llm.jsonl")[1]
    assert "task" not in row and len(row["teacher_scores"]) == 3


def error_line(capsys) -> str:
    """The command's one error line (library progress bars may precede it on stderr)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), lines
    assert sum(line.startswith("error: ") for line in lines) == 1
    return lines[-1]


def test_missing_inputs_are_one_line_errors(tmp_path, reranker_dir, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", RECORDS[:1])
    assert score(reranker_dir, tmp_path / "nope.jsonl", tmp_path / "o.jsonl") == 1
    err = error_line(capsys)
    assert "nope.jsonl" in err and "not found" in err
    assert score(str(tmp_path / "no_model"), data, tmp_path / "o.jsonl") == 1
    err = error_line(capsys)
    assert "no_model" in err and "not found" in err
    assert score(reranker_dir, data, data) == 1
    assert "also an input" in error_line(capsys)
    write_jsonl(tmp_path / "bad.jsonl", [{"query": "q", "pos": "not a list", "neg": 3}])
    assert score(reranker_dir, tmp_path / "bad.jsonl", tmp_path / "o.jsonl") == 1
    assert "bad.jsonl:1: neg" in error_line(capsys)


def test_precision_flag_reaches_the_reranker(tmp_path, reranker_dir, reranker):
    """--precision bf16 scores under bf16 autocast: close to the fp32 scores, not equal to them."""
    data = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    got = {}
    for choice in ("fp32", "bf16"):
        out = tmp_path / f"{choice}.jsonl"
        assert score(reranker_dir, data, out, "--precision", choice) == 0
        got[choice] = [s for row in read_jsonl(out) for s in row["pos_scores"] + row["neg_scores"]]
    assert got["fp32"] == pytest.approx(got["bf16"], abs=0.05)
    assert got["fp32"] != got["bf16"]
