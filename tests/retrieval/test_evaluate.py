"""evaluate.py and trec.py: the evaluate command (run + qrels, model + BEIR), run files, one-line errors."""

from __future__ import annotations

import json
import re

import pytest

from densetune.cli import main as cli
from densetune.data.trec import read_qrels, read_run, write_run
from densetune.errors import DataError
from densetune.retrieval.evaluate import evaluate_model, format_table
from densetune.retrieval.metrics import evaluate

QRELS = "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq1\td2\t2\r\nq2\td3\t1\r\nq3\td9\t1\r\n"
RUN = {"q1": {"d2": 0.9, "d5": 0.8, "d1": 0.7}, "q2": {"d4": 0.5, "d3": 0.5}}


@pytest.fixture
def files(tmp_path):
    qrels = tmp_path / "test.tsv"
    qrels.write_text(QRELS)
    run = tmp_path / "run.trec"
    write_run(RUN, run)
    return qrels, run


def test_run_round_trip_in_trec_eval_order(files):
    _, run = files
    assert read_run(run) == RUN
    lines = run.read_text().splitlines()
    assert lines[3].split()[:4] == ["q2", "Q0", "d4", "1"]  # tie: doc id descending first, as trec_eval ranks
    assert lines[0] == "q1 Q0 d2 1 0.9 densetune"


def test_read_qrels_beir_and_trec(tmp_path, files):
    qrels, _ = files
    assert read_qrels(qrels) == {"q1": {"d1": 1, "d2": 2}, "q2": {"d3": 1}, "q3": {"d9": 1}}
    trec = tmp_path / "qrels.txt"
    trec.write_text("q1 0 d1 1\nq1 0 d2 0\n")
    assert read_qrels(trec) == {"q1": {"d1": 1, "d2": 0}}


@pytest.mark.parametrize(
    "content,match",
    [
        ("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2 0.4\n", r"run\.trec:2: expected 6 columns"),
        ("q1 Q0 d1 1 high tag\n", r"run\.trec:1: score: score must be a number"),
        ("q1 Q0 d1 1 nan tag\n", "must be finite"),
        ("q1 Q0 d1 1 0.5 tag\nq1 Q0 d1 2 0.4 tag\n", "listed twice"),
    ],
)
def test_malformed_run_lines(tmp_path, content, match):
    path = tmp_path / "run.trec"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        read_run(path)


def test_cli_run_and_qrels(files, tmp_path, capsys):
    qrels, run = files
    out = tmp_path / "m.json"
    assert cli(["evaluate", "--run", str(run), "--qrels", str(qrels), "--out", str(out), "--per-query"]) == 0
    printed = capsys.readouterr().out
    assert "ndcg" in printed and "@10" in printed and "2 queries evaluated" in printed
    report = json.loads(out.read_text())
    expected = evaluate(read_qrels(qrels), RUN)
    assert report["metrics"] == pytest.approx(expected)
    assert set(report["per_query"]) == {"q1", "q2"} and report["queries"] == 2


def test_cli_metrics_and_cutoffs(files, tmp_path, capsys):
    qrels, run = files
    out = tmp_path / "m.json"
    args = ["evaluate", "--run", str(run), "--qrels", str(qrels), "--out", str(out)]
    assert cli([*args, "--metrics", "ndcg,recall@5,mrr", "--k", "1,3", "--missing-queries", "zero"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert list(metrics) == ["ndcg@1", "ndcg@3", "recall@5", "mrr@1", "mrr@3"]
    assert metrics["mrr@1"] == pytest.approx(1 / 3)  # q3 is missing from the run and counts as 0
    assert cli([*args, "--k", "10", "--overwrite"]) == 0
    assert set(json.loads(out.read_text())["metrics"]) == {
        f"{m}@10" for m in ("ndcg", "mrr", "recall", "map", "p", "accuracy")
    }


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--run", "RUN"], "give both --run and --qrels"),
        ([], "nothing to evaluate"),
        (["--run", "MISSING", "--qrels", "QRELS"], "run file not found"),
        (["--run", "RUN", "--qrels", "QRELS", "--metrics", "bleu@4"], "unknown metric 'bleu@4'"),
        (["--run", "RUN", "--qrels", "QRELS", "--k", "ten"], "--k must be"),
        (["--model", "m", "--data", "NOT_BEIR"], "not a BEIR directory"),
    ],
)
def test_cli_errors_are_one_line(files, tmp_path, capsys, argv, match):
    qrels, run = files
    subst = {
        "RUN": str(run),
        "QRELS": str(qrels),
        "MISSING": str(tmp_path / "missing"),
        "NOT_BEIR": str(tmp_path),
    }
    rc = cli(["evaluate", *[subst.get(a, a) for a in argv]])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and match in err and len(err.strip().splitlines()) == 1


def test_cli_malformed_run_is_one_line(files, tmp_path, capsys):
    qrels, _ = files
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2\n")
    assert cli(["evaluate", "--run", str(bad), "--qrels", str(qrels)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: {bad}:2: expected 6 columns (qid Q0 docid rank score tag), got 3"


def test_format_table():
    table = format_table({"ndcg@10": 0.5, "mrr@10": 0.25, "recall@100": 1.0, "map": 0.1})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "@10", "@100", "all"]
    assert lines[1].split() == ["ndcg", "0.5000", "-", "-"]
    assert lines[4].split() == ["map", "-", "-", "0.1000"]


def test_evaluate_model_with_a_stub(stub_encoder, beir_dir, tmp_path):
    means = evaluate_model(stub_encoder, beir_dir, "test", save_dir=tmp_path / "out", show_progress=False)
    assert set(means) == {"ndcg@10", "mrr@10", "recall@100", "map@100", "p@10", "accuracy@10"}
    assert means["recall@100"] == 1.0  # 10 documents: everything is retrieved
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["metrics"] == means and saved["queries"] == 2
    run = read_run(tmp_path / "out" / "run.trec")
    assert evaluate(read_qrels(beir_dir / "qrels" / "test.tsv"), run) == pytest.approx(means)


@pytest.mark.slow
def test_cli_evaluate_real_minilm_equals_sentence_transformers_pipeline(minilm_path, beir_dir, tmp_path):
    """The real model end to end, against the same retrieval done with sentence-transformers' encode."""
    from sentence_transformers import SentenceTransformer

    from densetune.retrieval.search import search_run

    out = tmp_path / "m.json"
    rc = cli(
        [
            "evaluate",
            *("--model", minilm_path, "--data", str(beir_dir), "--split", "test", "--out", str(out)),
            *("--precision", "fp32"),  # compared with sentence-transformers' fp32 pipeline at 1e-6
        ]
    )
    assert rc == 0
    metrics = json.loads(out.read_text())["metrics"]

    st = SentenceTransformer(minilm_path, device="cpu")
    with open(beir_dir / "corpus.jsonl", encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f]
    texts = [(c["title"] + " " + c["text"]).strip() for c in corpus]
    queries = {"q1": "why do cats purr", "q4": "fish"}
    run = search_run(
        list(queries), st.encode(list(queries.values())), [c["_id"] for c in corpus], st.encode(texts), 100
    )
    expected = evaluate(read_qrels(beir_dir / "qrels" / "test.tsv"), run)
    assert metrics == pytest.approx(expected, abs=1e-6)
    assert metrics["accuracy@10"] == 1.0


@pytest.mark.parametrize(
    "which,data,match",
    [
        ("run", "q1 Q0 d1 1 0.5 tag\n".encode("utf-16"), r"run\.trec:1: file is UTF-16-encoded"),
        ("run", b"q1 Q0 d1 1 0.5 tag\nq1 Q0 d\xe9 2 0.4 tag\n", r"run\.trec:2: not valid UTF-8 \(byte 0xe9"),
        ("qrels", "q1\td1\t1\n".encode("utf-16-le"), r"test\.tsv:1: binary file \(contains NUL bytes\)"),
        ("qrels", b"q1\td1\t1\nq\xff2\td3\t1\n", r"test\.tsv:2: not valid UTF-8 \(byte 0xff"),
    ],
)
def test_cli_run_or_qrels_not_utf8_is_one_line(files, capsys, which, data, match):
    qrels, run = files
    (run if which == "run" else qrels).write_bytes(data)
    assert cli(["evaluate", "--run", str(run), "--qrels", str(qrels)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err


@pytest.mark.parametrize(
    "run_text,qrels_text,match",
    [
        ("", QRELS, r"run\.trec: empty run"),
        ("\n\n", QRELS, r"run\.trec: empty run"),
        (None, "query-id\tcorpus-id\tscore\n", r"test\.tsv: no relevance judgements"),
        (None, "q1\td1\t0.5\n", r"test\.tsv:1: score: relevance must be an integer grade, got '0.5'"),
        (
            None,
            "q1 0 d1 1\nq1 0 d2 1\nq1 0 d1 2\n",
            r"test\.tsv:3: score: query 'q1' document 'd1' judged 1 on line 1",
        ),
        (None, "q7\td1\t1\n", r"run\.trec: no query of the run has relevance judgements"),
    ],
)
def test_cli_empty_lossy_or_conflicting_inputs_are_errors(files, capsys, run_text, qrels_text, match):
    qrels, run = files
    if run_text is not None:
        run.write_text(run_text)
    qrels.write_text(qrels_text)
    assert cli(["evaluate", "--run", str(run), "--qrels", str(qrels)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err


def test_identical_duplicate_qrels_rows_are_read_once_and_counted(tmp_path, caplog):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d1 1\nq1 0 d1 1\nq1 0 d2 1.0\nq1 0 d2 1\n")
    with caplog.at_level("WARNING"):
        assert read_qrels(path) == {"q1": {"d1": 1, "d2": 1}}
    assert "2 repeated (query, document) rows with the same relevance" in caplog.text
