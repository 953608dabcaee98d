"""Every validation error, one by one, with its exact ``path:line: field: message``; the validate command."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from densetune import cli
from densetune.data.formats import ReadStats, iter_examples
from densetune.data.store import load_examples
from densetune.errors import DataError
from densetune.validate import validate_paths

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSETUNE_CACHE", str(tmp_path / "cache"))


def lines(path: Path, *records) -> Path:
    """A JSONL file; str records are written verbatim (for broken lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8"
    )
    return path


def first_error(path: Path) -> str:
    """The message loading raises, checked to be the same one validation reports first."""
    with pytest.raises(DataError) as info:
        list(iter_examples(path))
    report = validate_paths([path])
    assert not report.ok and str(report.errors[0]) == str(info.value)
    return str(info.value)


def corpus_dir(
    directory: Path, corpus_id: str | None = "wiki", docs: dict | None = None, meta: str | None = None
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if meta is not None:
        (directory / "merlin_metadata.json").write_text(meta)
    elif corpus_id is not None:
        (directory / "merlin_metadata.json").write_text(
            json.dumps({"class": "TextQADataset", "corpus_id": corpus_id})
        )
    lines(
        directory / "part.jsonl",
        *({"id": k, "text": v} for k, v in (docs or {"d1": "one", "d2": "two"}).items()),
    )
    return directory


def corpus_id_json(path: Path, corpora: list[str], data: list[dict]) -> Path:
    """Corpus entry i on line 2 + i; data record i on line 4 + len(corpora) + i."""
    entries = ",\n".join("  " + json.dumps({"path": p}) for p in corpora)
    records = ",\n".join("  " + json.dumps(r) for r in data)
    path.write_text('{"corpus": [\n' + entries + '\n ],\n "data": [\n' + records + "\n]}\n")
    return path


REC = {
    "question_id": "q1",
    "question": "q",
    "corpus_id": "wiki",
    "pos_doc": [{"id": "d1"}],
    "neg_doc": ["d2"],
}


# ---------------------------------------------------------------------------------------------------------
# One test per error


def test_invalid_json_names_line(tmp_path):
    path = lines(tmp_path / "f.jsonl", {"query": "a", "pos": ["x"]}, '{"query": "b", "pos": ["y"]')
    assert (
        first_error(path)
        == f"{path}:2: invalid JSON: Expecting ',' delimiter (column 28); expected one JSON object per line"
    )


def test_invalid_json_in_json_array_names_line(tmp_path):
    path = tmp_path / "f.json"
    path.write_text('[\n {"query": "a", "pos_doc": "x"},\n {"query": "b" "pos_doc": "y"}\n]\n')
    assert first_error(path) == f"{path}:3: invalid JSON: Expecting ',' delimiter (column 16)"


def test_missing_query(tmp_path):
    path = lines(tmp_path / "f.jsonl", {"pos_doc": ["x"]})
    assert (
        first_error(path)
        == f"{path}:1: query: missing; expected the query text as a non-empty string in 'query' or 'question'"
    )


def test_missing_positive(tmp_path):
    path = lines(tmp_path / "f.jsonl", {"query": "q", "pos_doc": "x"}, {"query": "q", "neg_doc": ["x"]})
    assert first_error(path) == f"{path}:2: pos_doc: missing; expected at least one positive document"


def test_empty_positives(tmp_path):
    path = lines(tmp_path / "f.jsonl", {"query": "q", "pos": [], "neg": ["n"]})
    assert first_error(path) == f"{path}:1: pos: empty list; expected at least one positive document"


def test_empty_positives_corpus_id(tmp_path):
    corpus_dir(tmp_path / "wiki")
    path = corpus_id_json(tmp_path / "t.json", ["wiki"], [REC, {**REC, "pos_doc": []}])
    assert (
        first_error(path)
        == f"{path}:6: data[1].pos_doc: empty list; expected at least one positive document id"
    )


@pytest.mark.parametrize(
    ("record", "where"),
    [
        (
            {"query": ["q"], "pos": ["x"]},
            "query: got a list of 1; expected the query text as a non-empty string",
        ),
        ({"query": "q", "pos": [1]}, "pos[0]: got a number (1); expected a string"),
        ({"query": "q", "pos": ["x"], "neg": {"a": 1}}, "neg[0]: got an object; expected a string"),
        (
            {"query": "q", "pos": ["x"], "neg": 4},
            "neg: got a number (4); expected a string, a list of strings",
        ),
        (
            {"query": "q", "pos": ["x"], "pos_scores": "high"},
            "pos_scores: got a string ('high'); expected a list of numbers",
        ),
        (
            {"query": "q", "pos": ["x"], "pos_scores": [True]},
            "pos_scores[0]: got a boolean (true); expected a number",
        ),
        (
            {"query": "q", "pos": ["x"], "type": "ranking"},
            "type: unknown type 'ranking'; expected one of retrieval, symmetric_sts",
        ),
        ({"query": "q", "pos": ["x"], "prompt": 3}, "prompt: got a number (3); expected a string"),
        (
            {"query": "q", "pos": ["x"], "query_id": [1]},
            "query_id: got a list of 1; expected a string or integer id",
        ),
    ],
)
def test_wrong_types(tmp_path, record, where):
    path = lines(tmp_path / "f.jsonl", {"query": "ok", "pos": ["x"], "pos_scores": [1.0]}, record)
    assert first_error(path).startswith(f"{path}:2: {where}")


def test_wrong_type_not_an_object(tmp_path):
    path = lines(tmp_path / "f.jsonl", {"query": "ok", "pos_doc": ["x"]}, [1, 2])
    assert first_error(path) == f"{path}:2: got a list of 2; expected a JSON object (one training record)"


def test_wrong_type_dict_doc_text(tmp_path):
    path = lines(tmp_path / "f.jsonl", {"query": "q", "pos_doc": [{"text": 5}]})
    assert (
        first_error(path)
        == f"{path}:1: pos_doc[0].text: got a number (5); expected the document text as a string"
    )


def test_unknown_doc_id_names_id_and_corpus(tmp_path):
    wiki = corpus_dir(tmp_path / "wiki")
    path = corpus_id_json(
        tmp_path / "t.json", ["wiki"], [REC, {**REC, "question_id": "q2", "neg_doc": ["d2", "nope"]}]
    )
    assert first_error(path) == (
        f"{path}:6: data[1].neg_doc[1]: unknown document id 'nope' in corpus 'wiki' ({wiki}); expected an id present in the corpus"
    )


def test_unknown_doc_id_in_beir_qrels(tmp_path):
    root = tmp_path / "tiny"
    lines(root / "corpus.jsonl", {"_id": "d1", "text": "x"})
    lines(root / "queries.jsonl", {"_id": "q1", "text": "q"}, {"_id": "q2", "text": "q"})
    (root / "qrels").mkdir()
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td9\t1\n")
    with pytest.raises(DataError) as info:
        list(iter_examples(root))
    assert str(info.value) == (
        f"{root}/qrels/train.tsv:3: corpus-id: unknown document id 'd9' in corpus 'tiny' ({root}); expected an _id from corpus.jsonl"
    )


def test_unknown_corpus_id_in_record(tmp_path):
    corpus_dir(tmp_path / "wiki")
    path = corpus_id_json(tmp_path / "t.json", ["wiki"], [{**REC, "corpus_id": "news"}])
    assert first_error(path) == (
        f"{path}:5: data[0].corpus_id: unknown corpus_id 'news'; expected one of the corpora listed in \"corpus\": wiki"
    )


def test_missing_merlin_metadata(tmp_path):
    corpus_dir(tmp_path / "wiki", corpus_id=None)
    path = corpus_id_json(tmp_path / "t.json", ["wiki"], [REC])
    assert first_error(path) == (
        f"{path}:2: corpus[0].path: corpus directory '{tmp_path / 'wiki'}' has no merlin_metadata.json; "
        'expected {"class": "TextQADataset", "corpus_id": ...} in it'
    )


@pytest.mark.parametrize(
    ("meta", "where"),
    [
        ('{"class": "TextQADataset"', "1: invalid JSON: Expecting ',' delimiter (column 26)"),
        ('["wiki"]', "1: got a list of 1; expected a JSON object"),
        ('{"class": "TextQADataset"}', "1: corpus_id: missing; expected the corpus id as a non-empty string"),
        (
            '{"class": "TextQADataset", "corpus_id": 7}',
            "1: corpus_id: got a number (7); expected the corpus id",
        ),
        ('{"corpus_id": "wiki"}', "1: class: missing; expected the dataset class name as a string"),
        (
            '{"class": "X", "corpus_id": "wiki", "query_instruction": 1}',
            "1: query_instruction: got a number (1); expected a string",
        ),
    ],
)
def test_bad_merlin_metadata(tmp_path, meta, where):
    corpus_dir(tmp_path / "wiki", meta=meta)
    path = corpus_id_json(tmp_path / "t.json", ["wiki"], [REC])
    assert first_error(path).startswith(f"{tmp_path / 'wiki' / 'merlin_metadata.json'}:{where}")


def test_duplicate_corpus_id_at_two_paths(tmp_path):
    corpus_dir(tmp_path / "a")
    corpus_dir(tmp_path / "b")
    path = corpus_id_json(tmp_path / "t.json", ["a", "b"], [REC])
    assert first_error(path) == (
        f"{path}:3: corpus[1].path: corpus_id 'wiki' is used by two corpora ('{tmp_path / 'a'}' and "
        f"'{tmp_path / 'b'}'); expected each corpus_id at one path"
    )


def test_duplicate_doc_ids_in_corpus(tmp_path):
    wiki = corpus_dir(tmp_path / "wiki")
    lines(
        wiki / "part.jsonl", {"id": "d1", "text": "a"}, {"id": "d2", "text": "b"}, {"id": "d1", "text": "c"}
    )
    report = validate_paths([wiki])
    assert [str(e) for e in report.errors] == [
        f"{wiki / 'part.jsonl'}: id: duplicate document id 'd1' (rows 0 and 2); expected each id once per corpus"
    ]


def test_bad_corpus_rows_all_reported(tmp_path):
    wiki = corpus_dir(tmp_path / "wiki")
    (wiki / "part.jsonl").write_text('{"id": "d1", "text": "a"}\n{"id": "d2"}\n{"text": "x"}\nnope\n')
    report = validate_paths([wiki])
    part = wiki / "part.jsonl"
    assert [str(e) for e in report.errors] == [
        f"{part}:2: text: missing; expected the document text as a string",
        f"{part}:3: id: missing; expected the document id as a non-empty string",
        f"{part}:4: invalid JSON: Expecting value (column 1); expected one document object per line",
    ]


def test_score_length_mismatch_flag(tmp_path):
    path = lines(tmp_path / "f.jsonl", {"query": "q", "pos": ["x"], "neg": ["a", "b"], "neg_scores": [0.1]})
    assert (
        first_error(path)
        == f"{path}:1: neg_scores: 1 scores for 2 negatives; expected 2 (one per document, in order)"
    )


def test_score_length_mismatch_llm_embedder(tmp_path):
    path = lines(
        tmp_path / "qa" / "f.json", {"query": "q", "pos": ["x"], "neg": ["a", "b"], "teacher_scores": [1, 0]}
    )
    assert first_error(path) == (
        f"{path}:1: teacher_scores: 2 scores for 1 positive + 2 negatives; expected 3 (one per document, in order)"
    )


@pytest.mark.parametrize(
    ("literal", "shown"),
    [("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"), ("1e999", "Infinity")],
)
def test_non_finite_scores(tmp_path, literal, shown):
    path = tmp_path / "f.jsonl"
    path.write_text(f'{{"query": "q", "pos": ["x"], "neg": ["n"], "neg_scores": [{literal}]}}\n')
    assert (
        first_error(path)
        == f"{path}:1: neg_scores[0]: {shown} is not a finite number; expected finite scores"
    )


def test_empty_file(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text("")
    assert (
        first_error(path)
        == f"{path}: empty file; expected JSON lines or a JSON document with training records"
    )
    path.write_text("\n  \n")
    assert (
        first_error(path)
        == f"{path}: empty file; expected JSON lines or a JSON document with training records"
    )


def test_binary_file(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"query": "q"}\n\x00\x01\x02\x03')
    assert (
        first_error(path)
        == f"{path}:2: binary file (contains NUL bytes); expected UTF-8 JSON lines or a JSON document"
    )
    path.write_bytes(b"PAR1\x15\x04")
    assert (
        first_error(path)
        == f"{path}:1: binary file (a Parquet file); expected UTF-8 JSON lines or a JSON document"
    )


def test_wrong_encoding_latin1_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(
        b'{"query": "caf\xc3\xa9", "pos": ["x"]}\n{"query": "ok", "pos": ["y"]}\n{"query": "caf\xe9", "pos": ["z"]}\n'
    )
    assert first_error(path) == (
        f"{path}:3: not valid UTF-8 (byte 0xe9 at column 15); expected UTF-8 text (re-save the file as UTF-8)"
    )
    stats = ReadStats()
    assert len(list(iter_examples(path, skip_invalid=True, stats=stats))) == 2 and stats.skipped == 1


def test_wrong_encoding_utf16_and_json_document(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"query": "q", "pos": ["x"]}\n', encoding="utf-16")
    assert first_error(path) == f"{path}:1: file is UTF-16-encoded; expected UTF-8 text (re-save it as UTF-8)"
    doc = tmp_path / "f.json"
    doc.write_bytes(b'[\n {"query": "q", "pos_doc": "x"},\n {"query": "\xff", "pos_doc": "y"}\n]\n')
    assert (
        first_error(doc)
        == f"{doc}:3: not valid UTF-8 (byte 0xff); expected UTF-8 text (re-save the file as UTF-8)"
    )


def test_history_row_needs_teacher_scores(tmp_path):
    path = lines(tmp_path / "chat" / "f.json", {"query": "q", "history": ["a", "b"], "task": "chat"})
    assert (
        first_error(path)
        == f"{path}:1: teacher_scores: missing; a record with history needs teacher_scores (one per history row)"
    )


# ---------------------------------------------------------------------------------------------------------
# Validation reads everything; the command


def test_validate_collects_every_problem(tmp_path):
    path = lines(
        tmp_path / "f.jsonl",
        {"query": "a", "pos": ["x"], "neg": ["x", "y"]},
        {"query": "b", "pos": []},
        "oops",
        {"query": "a", "pos": ["x"], "neg": ["x", "y"]},
        {"query": "c", "pos": ["z"], "neg": ["w"], "neg_scores": [float("nan")]},
        {"query": "d", "pos": ["p", "q"], "neg": []},
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    report = validate_paths([path, empty])
    assert [str(e).split(": ")[0] for e in report.errors] == [
        f"{path}:2",
        f"{path}:3",
        f"{path}:5",
        str(empty),
    ]
    (s, e) = report.inputs
    assert (s.format, s.examples, s.invalid, s.unique_queries) == ("flag", 3, 3, 2)
    assert s.duplicates == 1 and s.negatives_with_positive == 2
    assert s.positives == {1: 2, 2: 1} and s.negatives == {2: 2, 0: 1}
    assert e.problems == 1
    text = report.render()
    assert "FAILED: 4 problems in 2 of 2 inputs (3 valid examples)" in text
    assert f"{path}:3: invalid JSON: Expecting value (column 1); expected one JSON object per line" in text


def test_duplicate_and_unique_counts_survive_compaction(tmp_path, monkeypatch):
    """The hash arrays are folded (sorted, deduplicated) every _COMPACT hashes: counts across folds are exact."""
    from densetune import validate

    monkeypatch.setattr(validate._Counter, "_COMPACT", 7)
    records = [{"query": f"q{i % 13}", "pos": [f"p{i % 13}"], "neg": [f"n{i % 26}"]} for i in range(100)]
    report = validate_paths([lines(tmp_path / "f.jsonl", *records)])
    (s,) = report.inputs
    assert s.examples == 100 and s.unique_queries == 13
    assert s.duplicates == 100 - 26  # (q, p, n) repeats with period 26


def test_ctrl_c_prints_the_counts_so_far_and_exits_non_zero(tmp_path, capsys, monkeypatch):
    from densetune import validate
    from densetune.data import formats

    path = lines(tmp_path / "f.jsonl", *[{"query": f"q{i}", "pos": ["p"], "neg": ["n"]} for i in range(50)])
    monkeypatch.setattr(formats, "CHUNK", 20)
    real = validate.iter_chunks

    def interrupted(*args, **kwargs):  # the user presses Ctrl-C while the third chunk is read
        for k, chunk in enumerate(real(*args, **kwargs)):
            if k == 2:
                raise KeyboardInterrupt
            yield chunk

    monkeypatch.setattr(validate, "iter_chunks", interrupted)
    assert cli.main(["validate", str(path), str(path)]) == 130
    out = capsys.readouterr().out
    assert "INTERRUPTED: counts so far (40 examples read, 0 problems)" in out
    assert out.count(str(path)) == 1  # the second input was not started
    assert "unique queries                 40" in out


def test_validate_examples_dir_is_clean():
    report = validate_paths([EXAMPLES])
    assert report.ok, report.render()
    assert {"nemo-corpus-id", "flag", "nemo-inline", "llm-embedder"} <= {s.format for s in report.inputs}
    assert report.examples >= 10


def test_validate_recognises_classic_nemo_evaluation_files(tmp_path):
    """A NeMo query file (doc_id labels) and document file are evaluation inputs: counted and checked, not
    reported as broken training data; a bad row in one is still a file:line: field: error."""
    queries, docs = tmp_path / "test_queries.jsonl", tmp_path / "test_docs.jsonl"
    queries.write_text(
        '{"query": "a?", "query_id": "q1", "doc_id": "d1"}\n{"query": "b?", "query_id": "q2", "doc_id": ["d2"]}\n'
    )
    docs.write_text('{"doc_id": "d1", "pos_doc": "alpha"}\n{"doc_id": "d2", "pos_doc": "beta"}\n')
    report = validate_paths([tmp_path])
    assert report.ok, report.render()
    kinds = {Path(s.path).name: s for s in report.inputs}
    assert kinds["test_queries.jsonl"].format == "nemo-queries (evaluation)"
    assert kinds["test_queries.jsonl"].unique_queries == 2
    assert kinds["test_docs.jsonl"].corpora == {"test_docs": 2}
    docs.write_text('{"doc_id": "d1", "pos_doc": "alpha"}\n{"doc_id": "d1", "pos_doc": "beta"}\n')
    report = validate_paths([docs])
    assert [str(e) for e in report.errors] == [f"{docs}:2: doc_id: duplicate document id 'd1'"]


def test_validate_scifact(scifact_dir):
    report = validate_paths([scifact_dir])
    assert report.ok, report.render()
    assert [(s.path.split(" ")[-1], s.examples) for s in report.inputs] == [("test)", 300), ("train)", 809)]
    assert report.inputs[0].corpora == {"scifact": 5183}


def test_scifact_query_metadata_is_kept_and_counted(scifact_dir):
    """SciFact's queries.jsonl carries evidence ``metadata`` on 693 of its 1,109 queries: kept and counted."""
    stats = ReadStats()
    examples = list(iter_examples(scifact_dir, split="test", stats=stats, resolve=False))
    assert len(examples) == 300
    note = (
        "queries with field 'metadata' in queries.jsonl, which densetune does not read "
        "(kept as extra, not trained on)"
    )
    assert stats.notes[note] == 693
    with_metadata = [ex for ex in examples if ex.extra]
    assert with_metadata and all(set(ex.extra) == {"metadata"} for ex in with_metadata)
    assert all(isinstance(ex.extra["metadata"], dict) and ex.extra["metadata"] for ex in with_metadata)


def test_cli_validate_ok(capsys):
    assert cli.main(["validate", str(EXAMPLES / "flag.jsonl"), str(EXAMPLES / "corpus_id")]) == 0
    out = capsys.readouterr().out
    assert "OK: 6 examples in 2 inputs, no problems" in out
    assert "positives per example" in out and "wiki (6 docs)" in out


def test_cli_validate_problems_exit_1_without_traceback(tmp_path, capsys):
    path = lines(tmp_path / "f.jsonl", {"query": "q", "pos": []})
    missing = tmp_path / "missing.jsonl"
    assert cli.main(["validate", str(path), str(missing)]) == 1
    captured = capsys.readouterr()
    assert f"{path}:1: pos: empty list; expected at least one positive document" in captured.out.splitlines()
    assert f"{missing}: file or directory not found" in captured.out.splitlines()
    assert "Traceback" not in captured.out + captured.err


def test_record_fields_a_format_does_not_read_are_reported(tmp_path, caplog, capsys):
    """Nothing is dropped silently: fields outside the format are counted by validate, stats and the store."""
    flag = lines(
        tmp_path / "f.jsonl",
        {"query": "q1", "pos": ["p"], "source": "web", "lang": "en"},
        {"query": "q2", "pos": ["p"], "source": "web"},
        {"query": "q3", "pos": ["p"]},
    )
    stats = ReadStats()
    examples = list(iter_examples(flag, stats=stats))
    assert [ex.extra for ex in examples] == [{"source": "web", "lang": "en"}, {"source": "web"}, {}]
    note = "records with field 'source', which the flag format does not read (kept as extra, not trained on)"
    assert stats.notes == {
        note: 2,
        "records with field 'lang', which the flag format does not read (kept as extra, not trained on)": 1,
    }

    wiki = corpus_dir(tmp_path / "wiki")
    data = corpus_id_json(tmp_path / "train.json", [str(wiki)], [{**REC, "score": 0.5}, REC])
    stats = ReadStats()
    assert [ex.extra for ex in iter_examples(data, stats=stats)] == [{"score": 0.5}, {}]
    assert stats.notes == {
        "records with field 'score', which the nemo-corpus-id format does not read (kept as extra, not trained on)": 1
    }

    with caplog.at_level(logging.WARNING, logger="densetune.data"):
        store = load_examples([flag])
    assert [store[i].extra for i in range(len(store))] == [
        {"source": "web", "lang": "en"},
        {"source": "web"},
        {},
    ]
    assert f"{note}: 2" in caplog.text
    assert cli.main(["validate", str(flag)]) == 0  # not a problem, but shown
    assert note in capsys.readouterr().out
