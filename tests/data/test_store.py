"""The memory-mapped example store and corpora: equality with streaming reads, caching, lookups, BEIR loading."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from densetune.data import arrowcache, docrows, idindex
from densetune.data import store as store_mod
from densetune.data.beir import load_beir
from densetune.data.corpus import Corpus, doc_text, load_corpus
from densetune.data.formats import iter_examples
from densetune.data.idindex import hash_id, hash_ids
from densetune.data.records import Doc
from densetune.data.store import load_examples
from densetune.errors import DataError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DENSETUNE_CACHE", str(tmp_path / "cache"))  # nothing reaches ~/.cache
    return tmp_path / "cache"


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def llm_file(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "chat" / "train.json",
        [
            {
                "query": "q",
                "pos": ["p"],
                "neg": ["n1", "n2"],
                "teacher_scores": [0.9, 0.2, 0.1],
                "answers": ["a"],
                "task": "qa",
            },
            {"query": "chat", "history": ["h1", "h2"], "teacher_scores": [0.3, 0.6]},
        ],
    )


@pytest.mark.parametrize("name", ["nemo_inline.jsonl", "flag.jsonl", "corpus_id/train.json"])
def test_store_equals_streaming_read(name, cache):
    path = EXAMPLES / name
    expected = list(iter_examples(path, cache_dir=cache))
    store = load_examples(path, cache_dir=cache)
    assert len(store) == len(expected)
    assert [store.get(i, resolve=True) for i in range(len(store))] == expected
    assert list(store.iter(resolve=True, batch_size=2)) == expected
    assert [store.resolve(store[i]) for i in range(len(store))] == expected
    assert store.batch(1, 3, resolve=True) == expected[1:3]


def test_store_llm_embedder_history_and_scores(tmp_path, cache):
    path = llm_file(tmp_path)
    store = load_examples(path, cache_dir=cache)
    assert list(store.iter(resolve=True)) == list(iter_examples(path))
    assert (
        store[1].history == store[1].negatives
        and store[1].neg_scores == [0.3, 0.6]
        and store[1].pos_scores == []
    )
    assert store.column("n_history").tolist() == [0, 2]


def test_store_beir_and_unresolved_docs(scifact_dir, cache):
    store = load_examples(scifact_dir, cache_dir=cache, split="test")
    assert len(store) == 300 and list(store.corpora) == ["scifact"] and len(store.corpora["scifact"]) == 5183
    ex = store[0]
    assert ex.positives[0].text == "" and ex.positives[0].id  # by id; text resolved on demand
    assert store.resolve(ex) == store.get(0, resolve=True)
    assert store.resolve(ex).positives[0].text
    assert list(store.iter(resolve=True)) == list(iter_examples(scifact_dir, split="test", cache_dir=cache))


def test_columns(cache):
    store = load_examples([EXAMPLES / "flag.jsonl", EXAMPLES / "corpus_id" / "train.json"], cache_dir=cache)
    assert store.column("task") == ["flag"] * 3 + ["wiki"] * 3
    assert store.column("query_id")[3:] == ["q-001", "q-002", "q-003"]
    assert store.column("n_pos").tolist() == [1] * 6
    assert store.column("n_neg").tolist() == [2, 2, 1, 2, 2, 0]
    assert store.column("type")[2] == "symmetric_sts"
    assert store.column("neg_ids")[3] == ["wiki-2", "wiki-5"]
    assert store.column("pos_ids")[0] == [store[0].positives[0].id]
    assert store.column("source")[3] == f"{EXAMPLES / 'corpus_id' / 'train.json'}:6"
    with pytest.raises(KeyError, match="unknown column 'nope'; expected one of query_id"):
        store.column("nope")
    assert store[-1].query_id == "q-003"
    with pytest.raises(IndexError):
        store[6]


def test_cache_hit_does_not_rebuild(tmp_path, cache, monkeypatch):
    path = write_jsonl(tmp_path / "f.jsonl", [{"query": "a", "pos": ["x"]}])
    first = load_examples(path, cache_dir=cache)
    calls = []
    original = store_mod._build_entry
    monkeypatch.setattr(store_mod, "_build_entry", lambda *a: calls.append(a) or original(*a))
    assert list(load_examples(path, cache_dir=cache)) == list(first)
    assert calls == []
    write_jsonl(path, [{"query": "a", "pos": ["x"]}, {"query": "b", "pos": ["y"]}])  # size/mtime change
    assert len(load_examples(path, cache_dir=cache)) == 2 and len(calls) == 1


def test_repeated_inline_passages_are_stored_once(tmp_path, cache, monkeypatch, caplog):
    # Three distinct negatives recur in every record; a title or an extra field makes another passage.
    records = [
        {
            "query": f"q{i}",
            "pos_doc": f"positive {i}",
            "neg_doc": ["shared a", "shared b", f"shared {'ab'[i % 2]}"],
        }
        for i in range(40)
    ]
    records.append({"query": "t", "pos_doc": [{"text": "shared a", "title": "T"}], "neg_doc": ["shared a"]})
    path = write_jsonl(tmp_path / "f.jsonl", records)
    monkeypatch.setattr(store_mod._SeenPassages, "_SLOTS", 1 << 16)  # no two of these passages share a slot
    with caplog.at_level(logging.INFO, logger="densetune.data"):
        store = load_examples(path, cache_dir=cache)
    entry = next((cache / "examples").iterdir())
    stored = pa.ipc.open_file(str(entry / "docs.arrow")).read_all()
    # 40 positives + "shared a" + "shared b" + the titled one (its negative "shared a" is the stored one)
    assert stored.num_rows == 43
    assert sorted(stored.column("text").to_pylist()).count("shared a") == 2  # with and without a title
    assert list(store) == list(iter_examples(path, resolve=False))  # every example reads back as written
    assert (
        "41 examples" in caplog.text and "43 inline passages stored (119 repeats stored once)" in caplog.text
    )


def test_changed_corpus_invalidates_entry(tmp_path, cache):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "merlin_metadata.json").write_text('{"class": "TextQADataset", "corpus_id": "c"}')
    write_jsonl(corpus / "d.jsonl", [{"id": "1", "text": "old"}])
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps(
            {
                "corpus": [{"path": "c"}],
                "data": [
                    {"question_id": "q", "question": "q", "corpus_id": "c", "pos_doc": ["1"], "neg_doc": []}
                ],
            }
        )
    )
    assert load_examples(path, cache_dir=cache).get(0, resolve=True).positives[0].text == "old"
    write_jsonl(corpus / "d.jsonl", [{"id": "0", "text": "zero"}, {"id": "1", "text": "new text"}])
    assert load_examples(path, cache_dir=cache).get(0, resolve=True).positives[0].text == "new text"


def test_skip_invalid_counts_warns_and_cached_error(tmp_path, cache, caplog):
    path = write_jsonl(
        tmp_path / "f.jsonl",
        [{"query": "a", "pos": ["x"]}, {"query": "b", "pos": []}, {"query": "c", "pos": ["y"]}],
    )
    with caplog.at_level(logging.WARNING, logger="densetune.data"):
        store = load_examples(path, skip_invalid=True, cache_dir=cache)
    assert len(store) == 2 and store.skipped == 1 and store.skipped_by_file == {str(path): 1}
    assert f"skipped 1 invalid records of 3 ({path}: 1); first: {path}:2: pos: empty list" in caplog.text
    with pytest.raises(DataError) as info:  # same cache entry, fail-fast mode: the same first error
        load_examples(path, cache_dir=cache)
    assert str(info.value) == f"{path}:2: pos: empty list; expected at least one positive document"


def test_fail_fast_does_not_cache(tmp_path, cache):
    path = write_jsonl(tmp_path / "f.jsonl", [{"query": "b", "pos": []}])
    with pytest.raises(DataError, match=r"f\.jsonl:1: pos: empty list"):
        load_examples(path, cache_dir=cache)
    assert not [p for p in (cache / "examples").iterdir()]


def test_load_examples_rejects_corpus_dir(cache):
    with pytest.raises(DataError, match="corpus directory, not training data"):
        load_examples(EXAMPLES / "corpus_id" / "wiki", cache_dir=cache)


def test_default_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSETUNE_CACHE", str(tmp_path / "envcache"))
    load_examples(EXAMPLES / "flag.jsonl")
    assert any((tmp_path / "envcache" / "examples").iterdir())


# ---------------------------------------------------------------------------------------------------------
# Corpus


def test_corpus_from_nemo_dir(cache):
    corpus = load_corpus(EXAMPLES / "corpus_id" / "wiki", cache_dir=cache)
    assert corpus.corpus_id == "wiki" and len(corpus) == 6
    assert corpus.metadata["query_instruction"].startswith("Given a question")
    assert corpus.get("wiki-5") == Doc(
        id="wiki-5",
        title="Mars",
        text="Mars is the fourth planet from the Sun and is called the Red Planet because iron oxide on its surface gives it a reddish colour.",
    )
    assert corpus.ids == [f"wiki-{i}" for i in range(1, 7)]
    assert corpus.rows(["wiki-3", "nope", "wiki-1"]).tolist() == [2, -1, 0]
    assert "wiki-2" in corpus and "nope" not in corpus
    assert [d.id for d in corpus] == corpus.ids
    with pytest.raises(DataError) as info:
        corpus.get("nope")
    assert (
        str(info.value)
        == f"{EXAMPLES / 'corpus_id' / 'wiki'}: id: unknown document id 'nope' in corpus 'wiki'"
    )


def test_corpus_parquet_and_int_ids(tmp_path, cache):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": [10, 20, 30], "text": ["a", "b", "c"], "other": [1, 2, 3]}), path)
    corpus = load_corpus(path, cache_dir=cache)
    assert corpus.corpus_id == "c" and corpus.get("20") == Doc(id="20", text="b", extra={"other": 2})
    pq.write_table(pa.table({"id": ["1"], "body": ["x"]}), path)
    with pytest.raises(DataError, match=r"c\.parquet: text: no 'text' column \(columns: id, body\)"):
        load_corpus(path, cache_dir=cache)


def test_corpus_rows_keep_their_other_fields(tmp_path, cache):
    """BEIR ``metadata`` and any other row fields or Parquet columns reach Doc.extra; empty ones carry nothing."""
    rows = [
        {"_id": "1", "title": "T", "text": "x", "metadata": {"url": "http://a"}, "year": 1999},
        {"_id": "2", "text": "y", "metadata": {}, "tags": [], "note": None},
        {"docid": "3", "contents": "z", "id": "alt-3", "text": "w"},
    ]
    corpus = load_corpus(write_jsonl(tmp_path / "beir" / "corpus.jsonl", rows), cache_dir=cache)
    assert corpus.get("1") == Doc(
        id="1", text="x", title="T", extra={"metadata": {"url": "http://a"}, "year": 1999}
    )
    assert corpus.get("2") == Doc(id="2", text="y")
    # the id and text fields used are the first present of _id/id/docid/doc_id and text/contents
    assert corpus.get("alt-3") == Doc(id="alt-3", text="w", extra={"docid": "3", "contents": "z"})

    table = pa.table(
        {
            "id": ["a", "b"],
            "text": ["p", "q"],
            "url": ["u1", None],
            "stamp": pa.array([0, 86_400_000_000], pa.timestamp("us")),
        }
    )
    pq.write_table(table, tmp_path / "c.parquet")
    corpus = load_corpus(tmp_path / "c.parquet", cache_dir=cache)
    assert corpus.get("a").extra == {"url": "u1", "stamp": "1970-01-01 00:00:00"}
    assert corpus.get("b").extra == {"stamp": "1970-01-02 00:00:00"}


def test_corpus_large_lookup_and_many_chunks(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(arrowcache, "_BATCH_BYTES", 2000)  # many record batches: take() must group by chunk
    monkeypatch.setattr(docrows, "_READ_ROWS", 100)
    n = 5000
    write_jsonl(tmp_path / "big.jsonl", [{"id": f"d{i}", "text": f"text {i}"} for i in range(n)])
    corpus = load_corpus(tmp_path / "big.jsonl", cache_dir=cache)
    assert corpus.table.column("text").num_chunks > 10
    ids = [f"d{(i * 7919) % n}" for i in range(3000)] + ["missing"]
    rows = corpus.rows(ids)
    assert rows[:-1].tolist() == [(i * 7919) % n for i in range(3000)] and rows[-1] == -1
    docs = corpus.docs(rows[:-1])
    assert [d.text for d in docs[:3]] == ["text 0", "text 2919", "text 838"]


def test_hash_collisions_are_resolved_exactly(tmp_path, cache, monkeypatch):
    """With every id hashing to the same value, lookups must still return the right rows."""
    monkeypatch.setattr(idindex, "hash_id", lambda s: 12345)
    monkeypatch.setattr(idindex, "hash_ids", lambda values: np.full(len(values), 12345, dtype=np.uint64))
    write_jsonl(tmp_path / "c.jsonl", [{"id": f"x{i}", "text": str(i)} for i in range(40)])
    corpus = load_corpus(tmp_path / "c.jsonl", cache_dir=cache)
    assert corpus.rows(["x7", "x39", "x0", "y"]).tolist() == [7, 39, 0, -1]
    many = [f"x{i}" for i in reversed(range(40))] + ["nope"]
    assert corpus.rows(many).tolist() == list(reversed(range(40))) + [-1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12), max_size=40))
def test_hash_ids_matches_python_hash(ids):
    assert hash_ids(ids).tolist() == [hash_id(i) for i in ids]


def test_corpus_cache_is_reused(tmp_path, cache):
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "1", "title": "T", "text": "x"}])
    a = load_corpus(path, cache_dir=cache)
    stamp = os.stat(cache / "corpora" / a.key / "docs.arrow").st_mtime_ns
    b = load_corpus(path, cache_dir=cache)
    assert b.key == a.key and os.stat(cache / "corpora" / a.key / "docs.arrow").st_mtime_ns == stamp
    assert b.get("1") == Doc(id="1", text="x", title="T")


def test_doc_text():
    assert doc_text(Doc(id="1", text="body", title="Head")) == "Head body"
    assert doc_text(Doc(id="1", text="body")) == "body"


def test_load_beir(scifact_dir, cache):
    data = load_beir(scifact_dir, "test", cache_dir=cache)
    assert isinstance(data.corpus, Corpus) and len(data.corpus) == 5183 and data.corpus.corpus_id == "scifact"
    assert len(data.queries) == 1109 and len(data.qrels) == 300
    assert sum(len(v) for v in data.qrels.values()) == 339
    with pytest.raises(DataError, match=r"no qrels for split 'dev'; expected one of: test, train"):
        load_beir(scifact_dir, "dev", cache_dir=cache)


def test_store_and_corpus_pickle_by_reference(cache):
    import pickle

    store = load_examples(
        [EXAMPLES / "nemo_inline.jsonl", EXAMPLES / "corpus_id" / "train.json"], cache_dir=cache
    )
    blob = pickle.dumps(store)
    assert len(blob) < 20_000  # paths and metadata, not the tables
    again = pickle.loads(blob)
    assert list(again.iter(resolve=True)) == list(store.iter(resolve=True))
    corpus = store.corpora["wiki"]
    assert pickle.loads(pickle.dumps(corpus)).get("wiki-1") == corpus.get("wiki-1")


def awkward_jsonl(path: Path) -> Path:
    """JSON lines with what reading block by block must get right: a byte-order mark, blank and
    whitespace-only lines (Unicode whitespace too), a line that is not UTF-8, invalid records, records
    without ids (their ids count records), history rows that are also negatives, repeated passages."""
    lines = ["\ufeff" + json.dumps({"query": "first", "pos": ["p0"], "neg": ["shared"]})]
    for i in range(60):
        record: dict = {"query": f"q{i}", "pos": [f"p{i}"], "neg": ["shared", f"n{i % 7}"]}
        if i % 11 == 3:
            record = {"query": f"h{i}", "history": ["shared", f"n{i % 5}"], "teacher_scores": [0.2, 0.7]}
        if i % 13 == 5:
            record = {"query": f"bad{i}", "pos": []}  # invalid
        if i % 17 == 2:
            record["query_id"] = f"id-{i}"
        lines.append(json.dumps(record))
        lines.append(["", "   ", "\u00a0\u2003", "\x1c", "\t\r"][i % 5] if i % 3 == 0 else None)
    text = "\n".join(line for line in lines if line is not None).encode("utf-8")
    text = text.replace(b'"q30"', b'"q\xff30"')  # not UTF-8: a record that is an error
    path.write_bytes(text + b"\n\n")
    return path


def test_parallel_build_equals_one_process_and_streaming_read(tmp_path, monkeypatch):
    path = awkward_jsonl(tmp_path / "train.jsonl")
    monkeypatch.setattr(store_mod, "_BLOCK_BYTES", 200)  # dozens of blocks, some cut mid-record-group
    stores = {
        w: load_examples(path, cache_dir=tmp_path / f"c{w}", skip_invalid=True, workers=w) for w in (1, 3)
    }
    expected_errors: list = []
    from densetune.data.formats import ReadStats

    stats = ReadStats()
    expected = list(iter_examples(path, skip_invalid=True, stats=stats, resolve=False))
    expected_errors = [str(e) for e in stats.errors]
    assert len(expected) > 40 and len(expected_errors) >= 5
    entries = {w: next((tmp_path / f"c{w}" / "examples").iterdir()) for w in stores}
    for name in ("examples.arrow", "docs.arrow", "meta.json"):  # the same cache, byte for byte
        assert (entries[1] / name).read_bytes() == (entries[3] / name).read_bytes()
    for store in stores.values():
        assert list(store) == expected
        assert [str(e) for e in store.errors] == expected_errors
    assert stores[3].errors[0].line == int(expected_errors[0].split(":")[1])  # errors keep their fields


def test_parallel_build_fails_fast_on_the_first_invalid_record(tmp_path, monkeypatch):
    path = awkward_jsonl(tmp_path / "train.jsonl")
    monkeypatch.setattr(store_mod, "_BLOCK_BYTES", 200)
    with pytest.raises(DataError) as info:
        load_examples(path, cache_dir=tmp_path / "c", workers=2)
    with pytest.raises(DataError) as streaming:
        list(iter_examples(path))
    assert str(info.value) == str(streaming.value)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b"{}", b"", b" ", b"\t\r", b"\xc2\xa0", b"\x1c", b"x\xff", b"\xff", b"\xef\xbb\xbf", b" {"]
        ),
        max_size=12,
    ),
    st.integers(1, 3),
)
def test_count_text_lines_counts_what_text_lines_yields(lines, first_line):
    from densetune.data.jsonrecords import count_text_lines, text_lines

    block = b"\n".join(lines) + (b"\n" if lines and first_line % 2 else b"")
    expected = sum(1 for _ in text_lines(block.split(b"\n"), "f", first_line))
    assert count_text_lines(block, "f", first_line) == expected


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(0, 11), max_size=20), max_size=4))
def test_seen_passages_place_equals_asking_one_passage_at_a_time(chunks):
    # 12 distinct passages over 8 slots: repeats within and across lists, and slot collisions
    def digest(p: int) -> tuple[int, int]:
        return (p * 0x9E3779B97F4A7C15 % 2**64, p + 1)

    class Table(store_mod._SeenPassages):
        _SLOTS = 8

    table, slots, next_row, reused = Table(), {}, 0, 0
    for chunk in chunks:
        expected_rows, expected_new = [], []
        for p in chunk:  # the reference: one passage at a time
            d = digest(p)
            held = slots.get(d[0] % 8)
            if held is not None and held[0] == d:
                expected_rows.append(held[1])
                expected_new.append(False)
                reused += 1
            else:
                slots[d[0] % 8] = (d, next_row)
                expected_rows.append(next_row)
                expected_new.append(True)
                next_row += 1
        pairs = np.array([digest(p) for p in chunk], dtype=np.uint64).reshape(-1, 2)
        rows, new = table.place(pairs, next_row - sum(expected_new))
        assert rows.tolist() == expected_rows and new.tolist() == expected_new
    assert table.reused == reused


def test_a_daemonic_process_builds_alone(monkeypatch):
    import multiprocessing

    assert store_mod.data_workers(3) == 3
    monkeypatch.setattr(multiprocessing.current_process(), "_config", {"daemon": True})
    assert store_mod.data_workers(3) == store_mod.data_workers() == 1
