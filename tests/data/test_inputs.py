"""Hostile inputs to the readers and the commands built on them: empty, looped, mixed, special files.

Each case is a real file (or directory) given to the command a user would run; the answer must be one line
naming the file (and line) with exit 1, or a counted warning, never silence or a traceback.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from densetune import cli
from densetune.data.store import load_examples
from densetune.errors import DataError
from densetune.validate import validate_paths

REC = {"query": "what purrs", "pos_doc": ["cats purr"], "neg_doc": ["dogs bark"]}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSETUNE_CACHE", str(tmp_path / "cache"))


def jsonl(path: Path, *records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


# --- zero usable inputs ------------------------------------------------------------------------------------


def test_empty_directory_fails_validate_convert_and_loading(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    report = validate_paths([empty])
    assert not report.ok and "directory holds no training data" in str(report.errors[0])
    assert cli.main(["validate", str(empty)]) == 1
    assert "FAILED" in capsys.readouterr().out
    out = tmp_path / "out.jsonl"
    assert cli.main(["convert", str(empty), str(out), "--to", "flag"]) == 1
    assert f"{empty}: directory holds no training data" in one_error(capsys)
    assert not out.exists()
    with pytest.raises(DataError, match="directory holds no training data"):
        load_examples([empty])


def test_convert_with_no_writable_example_writes_no_file(tmp_path, capsys):
    src = jsonl(tmp_path / "bad.jsonl", {"query": "q", "pos": []}, {"query": "q", "pos": []})
    out = tmp_path / "out.jsonl"
    assert cli.main(["convert", str(src), str(out), "--to", "inline", "--skip-invalid"]) == 1
    assert f"{out}: no examples to write" in one_error(capsys)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


# --- directory loops ---------------------------------------------------------------------------------------


def looped_dir(tmp_path: Path, n: int = 32) -> Path:
    """A directory of ``n`` records holding a symlink to itself and one to its parent (two loops)."""
    data = tmp_path / "data"
    jsonl(data / "part.jsonl", *({**REC, "query": f"query {i}"} for i in range(n)))
    (data / "self").symlink_to(data, target_is_directory=True)
    (data / "sub").mkdir()
    (data / "sub" / "up").symlink_to(data, target_is_directory=True)
    return data


def test_a_directory_loop_is_read_once_by_validate_convert_and_loading(tmp_path, capsys):
    data = looped_dir(tmp_path)
    report = validate_paths([data])
    assert report.ok and report.examples == 32
    out = tmp_path / "out.jsonl"
    assert cli.main(["convert", str(data), str(out), "--to", "flag"]) == 0
    assert len(out.read_text().splitlines()) == 32
    assert len(load_examples([data], cache_dir=tmp_path / "store")) == 32


def test_a_corpus_directory_loop_is_read_once(tmp_path):
    from densetune.data.corpus import load_corpus

    corpus = tmp_path / "wiki"
    corpus.mkdir()
    (corpus / "merlin_metadata.json").write_text(json.dumps({"class": "TextQADataset", "corpus_id": "wiki"}))
    jsonl(corpus / "part.jsonl", {"id": "d1", "text": "one"}, {"id": "d2", "text": "two"})
    (corpus / "again").symlink_to(corpus, target_is_directory=True)
    assert len(load_corpus(corpus)) == 2


# --- special files -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_fifo_device_and_symlink_loop_are_named_precisely(tmp_path, capsys):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    cases = [(fifo, "is a FIFO (named pipe), not a regular file"), (loop, "symlink loop")]
    if Path("/dev/zero").exists():
        cases.append((Path("/dev/zero"), "is a character device, not a regular file"))
    for path, what in cases:
        for argv in (
            ["validate", str(path)],
            ["convert", str(path), str(tmp_path / "o.jsonl"), "--to", "flag"],
        ):
            assert cli.main(argv) == 1
            captured = capsys.readouterr()
            text = captured.out + captured.err
            assert f"{path}: {what}" in text and "not found" not in text, text
        qrels = tmp_path / "q.tsv"
        qrels.write_text("q1\td1\t1\n")
        assert cli.main(["evaluate", "--run", str(path), "--qrels", str(qrels)]) == 1
        assert f"{path}: {what}" in one_error(capsys)
    # inside a directory the FIFO is one problem of that input, and reading never blocks on it
    jsonl(tmp_path / "good.jsonl", REC)
    report = validate_paths([tmp_path])
    assert report.examples == 1 and any("is a FIFO" in str(e) for e in report.errors)


# --- mixed formats and empty or conflicting documents ------------------------------------------------------


def test_mixed_formats_name_the_offending_lines(tmp_path):
    flag = {"query": "q", "pos": ["p"], "neg": ["n"]}
    tev = {"query_id": "t", "query": "q", "positive_passages": [{"docid": "1", "title": "", "text": "p"}]}
    path = jsonl(tmp_path / "mixed.jsonl", *([REC] * 8), flag, tev)
    report = validate_paths([path])
    assert report.inputs[0].format == "nemo-inline" and report.examples == 8
    assert [str(e) for e in report.errors] == [
        f"{path}:9: mixed formats: a FlagEmbedding / LLM-Embedder record in a file read as nemo-inline "
        "(its other records); expected one format per file",
        f"{path}:10: mixed formats: a Tevatron record in a file read as nemo-inline (its other records); "
        "expected one format per file",
    ]


@pytest.mark.parametrize(
    "record,field",
    [
        ({"query": "q", "pos_doc": ""}, "pos_doc[0]"),
        ({"query": "q", "pos_doc": ["ok"], "neg_doc": ["  "]}, "neg_doc[0]"),
        ({"query": "q", "pos_doc": [{"text": "", "id": "d1"}]}, "pos_doc[0].text"),
        ({"query": "q", "pos": ["ok", ""]}, "pos[1]"),
    ],
)
def test_an_empty_document_is_an_error(tmp_path, record, field):
    path = jsonl(tmp_path / "data.jsonl", record)
    report = validate_paths([path])
    assert [str(e) for e in report.errors] == [
        f"{path}:1: {field}: empty document (no text, title or image); expected the passage's text"
    ]


# --- validate checks every kind of input its help names ----------------------------------------------------


def test_validate_checks_runs_qrels_recipes_and_a_corpus_jsonl(tmp_path, capsys):
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 0.9 t\nq1 Q0 d2 2 0.5 t\n")
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    corpus = jsonl(tmp_path / "corpus.jsonl", {"_id": "d1", "text": "one"}, {"_id": "d2", "text": ""})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  path: some/model\ndata:\n  train: train.jsonl\n")
    report = validate_paths([run, qrels, corpus, recipe])
    assert report.ok, [str(e) for e in report.errors]
    kinds = {Path(s.path).name: s.format for s in report.inputs}
    assert kinds == {
        "run.trec": "run",
        "qrels.tsv": "qrels",
        "corpus.jsonl": "corpus",
        "recipe.yaml": "config",
    }
    assert cli.main(["validate", str(run), str(qrels), str(corpus), str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "judgements" in out and re.search(r"empty documents\s+1  \(warning\)", out)

    run.write_text("q1 Q0 d1 1 0.9 t\nq1 Q0 d1 2 0.5 t\n")
    qrels.write_text("q1\td1\t0.5\n")
    jsonl(corpus, {"_id": "d1", "text": ""}, {"_id": "d2", "text": ""})
    recipe.write_text("model:\n  path: m\noptim:\n  lr: 1\n  lr: 2\n")
    report = validate_paths([run, qrels, corpus, recipe])
    assert [str(e) for e in report.errors] == [
        f"{run}:2: document 'd1' listed twice for query 'q1'",
        f"{qrels}:1: score: relevance must be an integer grade, got '0.5' (not rounded: fix the file)",
        f"{corpus}: all 2 documents are empty (no text, title or image); expected texts",
        f"{recipe}:5: invalid YAML: duplicate key 'lr' (first on line 4)",
    ]


def test_a_tevatron_docid_with_two_texts_is_a_counted_warning(tmp_path, capsys):
    def rec(qid, text):
        return {
            "query_id": qid,
            "query": "q",
            "positive_passages": [{"docid": "d1", "title": "", "text": text}],
        }

    path = jsonl(tmp_path / "tev.jsonl", rec("a", "one text"), rec("b", "one text"), rec("c", "another text"))
    report = validate_paths([path])
    assert report.ok and report.inputs[0].notes["document ids with two different texts"] == "1  (warning)"
    assert cli.main(["validate", str(path)]) == 0
    assert re.search(r"document ids with two different texts\s+1  \(warning\)", capsys.readouterr().out)


@pytest.mark.skipif(
    not Path("/dev/zero").exists() or not hasattr(os, "mkfifo"), reason="no /dev/zero or FIFOs"
)
def test_encode_names_a_device_corpus_and_a_fifo_query_file(tmp_path, capsys):
    fifo = tmp_path / "queries.jsonl"
    os.mkfifo(fifo)
    out = str(tmp_path / "emb")
    assert cli.main(["encode", "--model", "m", "--corpus", "/dev/zero", "--out", out]) == 1
    assert "/dev/zero: is a character device, not a regular file; expected a corpus" in one_error(capsys)
    assert cli.main(["encode", "--model", "m", "--queries", str(fifo), "--out", out]) == 1
    assert f"{fifo}: is a FIFO (named pipe), not a regular file; expected a query file" in one_error(capsys)


def test_a_failed_corpus_id_convert_leaves_no_half_file(tmp_path, capsys):
    ok = {"question_id": "q1", "query": "q", "pos_doc": [{"id": "d1", "text": "one"}]}
    clash = {"question_id": "q2", "query": "q", "pos_doc": [{"id": "d1", "text": "two"}]}
    src = jsonl(tmp_path / "in" / "wiki.jsonl", ok, clash)
    out = tmp_path / "out" / "train.json"
    assert cli.main(["convert", str(src), str(out), "--to", "corpus-id"]) == 1
    assert "document id 'd1' has two different texts" in one_error(capsys)
    left = sorted(p.relative_to(out.parent).as_posix() for p in out.parent.rglob("*") if p.is_file())
    assert left == [], left
