"""Writing Examples in each format: round trips (exact modulo what a format cannot carry), the convert command."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from densetune import cli
from densetune.data.corpus import doc_text
from densetune.data.formats import iter_examples
from densetune.data.records import Doc, Example, text_doc_id
from densetune.data.writers import write_examples
from densetune.errors import DataError
from densetune.validate import validate_paths

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSETUNE_CACHE", str(tmp_path / "cache"))


def unsourced(examples):
    return [dataclasses.replace(e, source="") for e in examples]


def roundtrip(examples, path: Path, fmt: str) -> list[Example]:
    write_examples(examples, path, fmt)
    return list(iter_examples(path))


# ---------------------------------------------------------------------------------------------------------
# Same format in and out: equal Examples (the file has the same name, so default ids and tasks agree)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("nemo_inline.jsonl", "inline"), ("flag.jsonl", "flag"), ("corpus_id/train.json", "corpus-id")],
)
def test_roundtrip_same_format(tmp_path, name, fmt):
    src = EXAMPLES / name
    original = list(iter_examples(src))
    out = tmp_path / "out" / Path(name).name
    assert unsourced(roundtrip(original, out, fmt)) == unsourced(original)


def test_roundtrip_tevatron(tmp_path):
    original = [
        Example(
            query_id="1",
            query="q",
            positives=[Doc(id="a", text="x", title="T", extra={"score": 3})],
            negatives=[Doc(id="b", text="y")],
            task="tev",
        )
    ]
    got = roundtrip(original, tmp_path / "tev.jsonl", "tevatron")
    assert unsourced(got) == original


def test_corpus_id_output_layout(tmp_path):
    out = tmp_path / "o" / "train.json"
    write_examples(iter_examples(EXAMPLES / "corpus_id" / "train.json"), out, "corpus-id")
    meta = json.loads((tmp_path / "o" / "wiki" / "merlin_metadata.json").read_text())
    assert meta == {
        "class": "TextQADataset",
        "corpus_id": "wiki",
        "query_instruction": "Given a question, retrieve Wikipedia passages that answer it.",
    }
    doc = json.loads(out.read_text())
    assert doc["corpus"] == [{"path": "wiki"}]
    assert doc["data"][0] == {
        "question_id": "q-001",
        "question": "When did the Berlin Wall fall?",
        "corpus_id": "wiki",
        "pos_doc": [{"id": "wiki-1"}],
        "neg_doc": [{"id": "wiki-2"}, {"id": "wiki-5"}],
    }
    assert validate_paths([out]).ok


# ---------------------------------------------------------------------------------------------------------
# Across formats: what is kept, what is dropped (with a warning naming it)


def test_flag_to_inline_drops_scores_with_warning(tmp_path, caplog):
    out = tmp_path / "x.jsonl"
    with caplog.at_level(logging.WARNING, logger="densetune.data"):
        got = roundtrip(list(iter_examples(EXAMPLES / "flag.jsonl")), out, "inline")
    assert (
        "the inline format cannot carry: pos_scores (2 examples), neg_scores (2 examples), prompt (3 examples), type (1 examples)"
        in caplog.text
    )
    assert got[0].pos_scores is None and got[0].query == "how long does it take to boil an egg"


def test_corpus_id_to_flag_renders_titles(tmp_path):
    (first, *_) = roundtrip(
        list(iter_examples(EXAMPLES / "corpus_id" / "train.json")), tmp_path / "f.jsonl", "flag"
    )
    text = "Berlin Wall The Berlin Wall fell on 9 November 1989, when East German authorities opened the border crossings."
    assert first.positives == [Doc(id=text_doc_id(text), text=text)]


def test_inline_to_corpus_id_uses_task_as_corpus(tmp_path):
    original = list(iter_examples(EXAMPLES / "nemo_inline.jsonl"))
    got = roundtrip(original, tmp_path / "c" / "train.json", "corpus-id")
    assert (tmp_path / "c" / "nemo_inline" / "corpus.parquet").is_file()
    assert [e.corpus_id for e in got] == ["nemo_inline"] * 4
    assert [e.positives for e in got] == [e.positives for e in original]  # same ids (text hashes) and texts


def test_history_rows_are_counted_not_written(tmp_path, caplog):
    history = Example(
        query_id="h", query="q", negatives=[Doc(text="a")], neg_scores=[1.0], history=[Doc(text="a")]
    )
    normal = Example(query_id="n", query="q", positives=[Doc(text="p")])
    with caplog.at_level(logging.WARNING, logger="densetune.data"):
        assert write_examples([history, normal], tmp_path / "f.jsonl", "flag") == 1
    assert "examples without a positive (not written) (1 examples)" in caplog.text


def test_unresolved_documents_are_refused(tmp_path):
    ex = Example(query_id="q", query="q", positives=[Doc(id="d1")], corpus_id="wiki", source="t.json:3")
    with pytest.raises(
        DataError, match=r"t\.json:3: positives\[0\]: document 'd1' has no text; resolve documents"
    ):
        write_examples([ex], tmp_path / "f.jsonl", "inline")
    assert not (tmp_path / "f.jsonl").exists()


def test_corpus_id_conflicts(tmp_path):
    a = Example(query_id="1", query="q", positives=[Doc(id="d", text="one")], task="t", source="s:1")
    b = Example(query_id="2", query="q", positives=[Doc(id="d", text="two")], task="t", source="s:2")
    with pytest.raises(DataError, match=r"s:2: document id 'd' has two different texts in corpus 't'"):
        write_examples([a, b], tmp_path / "o" / "train.json", "corpus-id")
    foreign = tmp_path / "p" / "t"
    foreign.mkdir(parents=True)
    (foreign / "docs.jsonl").write_text("{}")
    with pytest.raises(DataError, match=r"corpus directory for 't' already exists and holds other files"):
        write_examples([a], tmp_path / "p" / "train.json", "corpus-id")


def test_unknown_format():
    with pytest.raises(
        ValueError, match="unknown output format 'csv'; expected one of inline, corpus-id, flag, tevatron"
    ):
        write_examples([], "x", "csv")


# ---------------------------------------------------------------------------------------------------------
# Property: random valid Examples survive write -> read


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=15)
_query = _text.filter(lambda s: s.strip())
_score = st.floats(allow_nan=False, allow_infinity=False, width=64)


@st.composite
def _doc(draw, ids: bool = True, rich: bool = True) -> Doc:
    text = draw(_query)  # an empty document is refused by the readers
    doc_id = (
        draw(st.sampled_from(["", text_doc_id(text)]) | st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True))
        if ids
        else text_doc_id(text)
    )
    if not rich:
        return Doc(id=doc_id or text_doc_id(text), text=text)
    extra = draw(
        st.dictionaries(st.sampled_from(["nr_ocr", "lang", "score"]), st.integers() | _text, max_size=2)
    )
    return Doc(
        id=doc_id or text_doc_id(text),
        text=text,
        title=draw(_text),
        image=draw(st.sampled_from(["", "img/1.png"])),
        extra=extra,
    )


@st.composite
def _examples(draw, fmt: str) -> list[Example]:
    out = []
    for i in range(draw(st.integers(1, 4))):
        rich = fmt in ("inline", "tevatron")
        pos = draw(st.lists(_doc(rich=rich), min_size=1, max_size=3))
        neg = draw(st.lists(_doc(rich=rich), max_size=3))
        ex = Example(
            query_id=draw(st.from_regex(r"q[0-9]{1,4}", fullmatch=True)),
            query=draw(_query),
            positives=pos,
            negatives=neg,
            task="data",
        )
        if fmt == "flag":
            with_scores = draw(st.booleans())
            ex.pos_scores = (
                draw(st.lists(_score, min_size=len(pos), max_size=len(pos))) if with_scores else None
            )
            ex.neg_scores = (
                draw(st.lists(_score, min_size=len(neg), max_size=len(neg))) if with_scores else None
            )
            ex.type = draw(st.sampled_from(["retrieval", "symmetric_sts", "only_1neg"]))
            ex.prompt = draw(_text)
            ex.category = draw(_text)
            ex.query_id = f"data.jsonl:{i}"
        out.append(ex)
    return out


def _expected(ex: Example, fmt: str) -> Example:
    if fmt == "flag":
        render = (
            [Doc(id=text_doc_id(doc_text(d)), text=doc_text(d)) for d in ex.positives],
            [Doc(id=text_doc_id(doc_text(d)), text=doc_text(d)) for d in ex.negatives],
        )
        return dataclasses.replace(ex, positives=render[0], negatives=render[1])
    if fmt == "corpus-id":
        return dataclasses.replace(ex, corpus_id="data")
    return ex


@pytest.mark.parametrize("fmt", ["inline", "flag", "tevatron", "corpus-id"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_examples_roundtrip(tmp_path_factory, fmt, data):
    examples = data.draw(_examples(fmt))
    if fmt == "corpus-id":  # one text per id in a corpus: make ids follow texts
        for ex in examples:
            ex.positives = [
                Doc(id=text_doc_id(d.text) + "-" + str(len(d.title)), text=d.text) for d in ex.positives
            ]
            ex.negatives = [
                Doc(id=text_doc_id(d.text) + "-" + str(len(d.title)), text=d.text) for d in ex.negatives
            ]
    out = tmp_path_factory.mktemp(fmt.replace("-", "")) / (
        "data.json" if fmt == "corpus-id" else "data.jsonl"
    )
    got = roundtrip(examples, out, fmt)
    assert unsourced(got) == [_expected(e, fmt) for e in examples]


# ---------------------------------------------------------------------------------------------------------
# The command


def test_cli_convert_scifact_then_validate(scifact_dir, tmp_path, capsys):
    out = tmp_path / "sf" / "train.json"
    assert cli.main(["convert", str(scifact_dir), str(out), "--to", "corpus-id", "--split", "train"]) == 0
    assert (
        f"read 809 examples (beir) from {scifact_dir}; wrote 809 to {out} (corpus-id)"
        in capsys.readouterr().out
    )
    report = validate_paths([out])
    assert report.ok and report.examples == 809
    (summary,) = report.inputs
    assert summary.corpora == {
        "scifact": len(
            {d for e in iter_examples(scifact_dir, resolve=False) for d in (p.id for p in e.positives)}
        )
    }
    inline = tmp_path / "sf.jsonl"
    assert cli.main(["convert", str(out), str(inline), "--to", "inline"]) == 0
    assert validate_paths([inline]).ok


def test_cli_convert_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["x"]}\n{"query": "q", "pos": "x", "neg_scores": [1]}\n')
    assert cli.main(["convert", str(bad), str(tmp_path / "out.jsonl"), "--to", "tevatron"]) == 1
    captured = capsys.readouterr()
    assert (
        captured.err
        == f"error: {bad}:2: neg_scores: 1 scores for 0 negatives; expected 0 (one per document, in order)\n"
    )
    assert "Traceback" not in captured.out + captured.err
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_convert_skip_invalid(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["x"]}\n{"query": "q", "pos": []}\n')
    assert cli.main(["convert", str(bad), str(tmp_path / "o.jsonl"), "--to", "inline", "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 to" in out and f"skipped 1 invalid records; first: {bad}:2: pos: empty list" in out


def test_cli_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["convert", "a", "b", "--to", "csv"])
    assert info.value.code == 2


def test_category_survives_reading_the_store_grouping_and_flag_output(tmp_path, minilm_tokenizer):
    """BGE-EN-ICL's ``category`` is data: read, cached, grouped, written back, and used by ICL examples."""
    from densetune.data.dataset import RetrievalTrainDataset
    from densetune.data.flag_collators import SameEmbedCollator
    from densetune.data.groups import GroupSelector
    from densetune.data.store import load_examples

    rows = [
        {
            "query": f"headline {i}",
            "pos": [f"other headline {i}"],
            "neg": [f"far {i}"],
            "type": "symmetric_clustering",
            "category": label,
        }  # fmt: skip
        for i, label in enumerate(["sports", "politics", "sports"])
    ]
    src = tmp_path / "clustering.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert [ex.category for ex in iter_examples(src)] == ["sports", "politics", "sports"]

    store = load_examples([src], cache_dir=tmp_path / "cache")
    groups = [g for g in RetrievalTrainDataset(store, GroupSelector(2, negative="first"))]
    assert [g.category for g in groups] == ["sports", "politics", "sports"]

    out = roundtrip(list(iter_examples(src)), tmp_path / "out.jsonl", "flag")
    assert [ex.category for ex in out] == ["sports", "politics", "sports"]

    collate = SameEmbedCollator(
        minilm_tokenizer,
        use_special_tokens=False,
        append_eos=False,
        max_examples=2,
        query_max_len=256,
        seed=0,
    )
    queries, _ = collate.texts(groups)
    with_examples = [q for q in queries if q.count("Response:") > 1]
    assert with_examples, queries
    for q in with_examples:  # each example answers with a category label, never the positive text
        assert "other headline" not in q and ("sports" in q or "politics" in q)


def test_nfcorpus_document_metadata_survives_tevatron_and_is_counted_by_flag(nfcorpus_dir, tmp_path, caplog):
    """Real BEIR data: NFCorpus documents carry ``metadata.url``; it reaches tevatron output, flag says it drops it."""
    examples = list(itertools.islice(iter_examples(nfcorpus_dir, split="dev"), 20))
    doc = examples[0].positives[0]
    assert doc.extra["metadata"]["url"].startswith("http")
    got = roundtrip(examples, tmp_path / "t.jsonl", "tevatron")
    assert got[0].positives[0].extra == doc.extra
    with caplog.at_level(logging.WARNING, logger="densetune.data"):
        write_examples(examples, tmp_path / "f.jsonl", "flag")
    with_extra = sum(any(d.extra for d in (*e.positives, *e.negatives)) for e in examples)
    assert with_extra > 0 and f"document extra fields ({with_extra} examples)" in caplog.text


@pytest.mark.parametrize("fmt", ["inline", "flag", "tevatron", "corpus-id"])
def test_record_fields_no_format_reads_survive_conversion(tmp_path, fmt):
    """A record's unread fields (Example.extra) are written back as record fields by every output format."""
    src = tmp_path / "src.jsonl"
    rows = [
        {"query": "q1", "pos": ["p1"], "neg": ["n1"], "source": "web", "meta": {"lang": "en", "year": 2020}},
        {"query": "q2", "pos": ["p2"]},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples = list(iter_examples(src))
    assert examples[0].extra == {"source": "web", "meta": {"lang": "en", "year": 2020}}
    got = roundtrip(examples, tmp_path / "out" / f"train.json{'' if fmt == 'corpus-id' else 'l'}", fmt)
    assert [ex.extra for ex in got] == [{"source": "web", "meta": {"lang": "en", "year": 2020}}, {}]


def test_extra_field_named_like_an_output_field_is_counted_not_written(tmp_path, caplog):
    """A flag record's unread ``question_id`` cannot become an inline record's ``question_id``: counted, left out."""
    src = tmp_path / "src.jsonl"
    src.write_text(
        json.dumps({"query": "q", "pos": ["p"], "question_id": "elsewhere"}) + "\n", encoding="utf-8"
    )
    examples = list(iter_examples(src))
    assert examples[0].extra == {"question_id": "elsewhere"}
    with caplog.at_level(logging.WARNING, logger="densetune.data"):
        got = roundtrip(examples, tmp_path / "x.jsonl", "inline")
    assert got[0].query_id == examples[0].query_id == "src.jsonl:0" and got[0].extra == {}
    assert "extra field 'question_id' (a field of this format) (1 examples)" in caplog.text


def test_beir_query_metadata_goes_into_inline_output(scifact_dir, tmp_path):
    """SciFact's query ``metadata`` (evidence) is written into converted records and read back as extra."""
    examples = [ex for ex in iter_examples(scifact_dir, split="test") if ex.extra][:5]
    assert len(examples) == 5
    got = roundtrip(examples, tmp_path / "x.jsonl", "inline")
    assert [ex.extra for ex in got] == [ex.extra for ex in examples]
