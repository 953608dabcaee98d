"""encode.py: NeMo layout, query inputs, sharded resumable corpus encoding, the CLI, and the real MiniLM."""

from __future__ import annotations

import json

import numpy as np
import pytest

from densetune.cli import main as cli
from densetune.data.inputs import DocSource, open_corpus, read_queries
from densetune.errors import DataError
from densetune.retrieval.embeddings import load_embeddings, read_meta
from densetune.retrieval.encode import encode_corpus, encode_queries


def _docs(n=10):
    ids = [f"doc{i}" for i in range(n)]
    texts = [f"text number {i} about {'cats' if i % 2 else 'dogs'} and thing{i}" for i in range(n)]
    return DocSource.from_lists(ids, texts)


def test_query_layout_rows_align_with_ids(stub_encoder, tmp_path):
    encode_queries(
        stub_encoder, ["a", "b", "c"], ["red fox", "blue sky", "red sky"], tmp_path, show_progress=False
    )
    ids, emb = load_embeddings(tmp_path, "query")
    assert ids == ["a", "b", "c"]
    assert (tmp_path / "query.ids").read_text() == "a\nb\nc\n"
    assert emb.shape == (3, 32) and emb.dtype == np.float32
    ref = stub_encoder.encode_texts(["blue sky"], is_query=True).numpy()[0]
    np.testing.assert_allclose(emb[1], ref, atol=1e-6)
    assert read_meta(tmp_path, "query")["rows"] == 3


def test_float16_storage(stub_encoder, tmp_path):
    encode_queries(stub_encoder, ["a"], ["x y"], tmp_path, dtype="float16", show_progress=False)
    assert np.load(tmp_path / "query.npy").dtype == np.float16


def test_corpus_resume_equals_one_shot(stub_encoder, tmp_path):
    source = _docs(10)
    one_shot = encode_corpus(stub_encoder, source, tmp_path / "one", shard_size=3, show_progress=False)
    assert one_shot.complete and one_shot.shards_total == 4

    first = encode_corpus(
        stub_encoder, source, tmp_path / "res", shard_size=3, max_shards=2, show_progress=False
    )
    assert not first.complete and first.shards_done == 2
    assert sorted(p.name for p in (tmp_path / "res").glob("doc.shard-*")) == [
        "doc.shard-00000.ids",
        "doc.shard-00000.npy",
        "doc.shard-00001.ids",
        "doc.shard-00001.npy",
    ]
    assert not (tmp_path / "res" / "doc.npy").exists()
    with pytest.raises(DataError, match="unfinished encode"):
        load_embeddings(tmp_path / "res", "doc")

    before = stub_encoder.encoded
    second = encode_corpus(stub_encoder, source, tmp_path / "res", shard_size=3, show_progress=False)
    assert second.complete and second.shards_encoded == 2
    assert stub_encoder.encoded - before == 4  # only the last two shards (3 + 1 documents)
    assert not list((tmp_path / "res").glob("doc.shard-*"))

    ids_a, emb_a = load_embeddings(tmp_path / "one", "doc")
    ids_b, emb_b = load_embeddings(tmp_path / "res", "doc")
    assert ids_a == ids_b == source.ids
    np.testing.assert_array_equal(np.asarray(emb_a), np.asarray(emb_b))

    again = encode_corpus(stub_encoder, source, tmp_path / "res", shard_size=3, show_progress=False)
    assert again.complete and again.shards_encoded == 0


def test_interrupted_encode_resumes(tmp_path, stub_encoder):
    """A crash mid-shard leaves only complete shards; the re-run finishes them."""

    class Crashing:
        config = stub_encoder.config

        def __init__(self):
            self.calls = 0

        def encode_texts(self, texts, **kw):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return stub_encoder.encode_texts(texts, **kw)

    source = _docs(10)
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(Crashing(), source, tmp_path, shard_size=3, show_progress=False)
    assert len(list(tmp_path.glob("doc.shard-*.npy"))) == 2
    assert not list(tmp_path.glob("*.tmp"))
    result = encode_corpus(stub_encoder, source, tmp_path, shard_size=3, show_progress=False)
    assert result.complete and result.shards_encoded == 2


def test_other_settings_or_corpus_are_refused(stub_encoder, tmp_path):
    source = _docs(10)
    encode_corpus(
        stub_encoder, source, tmp_path, shard_size=3, max_shards=1, meta={"model": "a"}, show_progress=False
    )
    with pytest.raises(DataError, match="different encode.*model"):
        encode_corpus(stub_encoder, source, tmp_path, shard_size=3, meta={"model": "b"}, show_progress=False)
    with pytest.raises(DataError, match="different encode.*shard_size"):
        encode_corpus(stub_encoder, source, tmp_path, shard_size=4, meta={"model": "a"}, show_progress=False)
    result = encode_corpus(
        stub_encoder, source, tmp_path, shard_size=4, meta={"model": "b"}, overwrite=True, show_progress=False
    )
    assert result.complete and read_meta(tmp_path, "doc")["model"] == "b"


def test_tampered_shard_is_detected(stub_encoder, tmp_path):
    source = _docs(10)
    encode_corpus(stub_encoder, source, tmp_path, shard_size=3, max_shards=2, show_progress=False)
    (tmp_path / "doc.shard-00001.ids").write_text("x\ny\nz\n")
    with pytest.raises(DataError, match="shard does not match"):
        encode_corpus(stub_encoder, source, tmp_path, shard_size=3, show_progress=False)


# ------------------------------------------------------------------------------------------------ inputs


def test_read_queries_formats(tmp_path, beir_dir):
    beir = tmp_path / "queries.jsonl"
    beir.write_text('{"_id": "q1", "text": "hello"}\n\n{"_id": 2, "text": "world"}\n')
    assert read_queries(beir) == (["q1", "2"], ["hello", "world"])
    nemo = tmp_path / "nemo.jsonl"
    nemo.write_text('{"query": "hello", "query_id": "a", "doc_id": "d1"}\n')
    assert read_queries(nemo) == (["a"], ["hello"])
    # a BEIR directory: only the split's queries, in queries.jsonl order
    assert read_queries(beir_dir, "test") == (["q1", "q4"], ["why do cats purr", "fish"])
    assert read_queries(beir_dir, "train")[0] == ["q1", "q2", "q3"]


@pytest.mark.parametrize(
    "content,match",
    [
        ('{"_id": "q1", "text": "a"}\n{"_id": "q1"\n', ":2: invalid JSON"),
        ('{"_id": "q1"}\n', "missing the query text"),
        ('{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n', "duplicate query id"),
        ('{"_id": "q1", "text": ["a"]}\n', "as a string"),
    ],
)
def test_read_queries_errors_name_the_line(tmp_path, content, match):
    path = tmp_path / "q.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        read_queries(path)


def test_read_queries_unknown_split(beir_dir):
    with pytest.raises(DataError, match="expected one of: test, train"):
        read_queries(beir_dir, "dev")


def test_open_corpus_beir_title_convention_and_nemo_doc_file(beir_dir, tmp_path):
    source = open_corpus(beir_dir)
    assert source.ids[:2] == ["d1", "d2"]
    assert source.texts(0, 3) == [
        "Cats cats purr and sleep all day",
        "Dogs dogs bark at the mailman",
        "cats and dogs can be friends",
    ]
    nemo = tmp_path / "docs.jsonl"
    nemo.write_text('{"pos_doc": "first text", "doc_id": 5}\n{"pos_doc": "second", "doc_id": "x"}\n')
    source = open_corpus(nemo)
    assert source.ids == ["5", "x"] and source.texts(0, 2) == ["first text", "second"]


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_encode_errors(tmp_path, capsys):
    rc = cli(["encode", "--model", "m", "--out", str(tmp_path)])
    assert rc == 1 and "nothing to encode" in capsys.readouterr().err
    rc = cli(["encode", "--model", "m", "--queries", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "not found" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "q.jsonl").write_text('{"_id": "a", "text": "x"}\n')
    rc = cli(
        [
            "encode",
            "--model",
            str(tmp_path / "no-model"),
            "--queries",
            str(tmp_path / "q.jsonl"),
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "model not found" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_encode_real_minilm_matches_sentence_transformers(minilm_path, beir_dir, tmp_path):
    """The real model: layout, resume across CLI runs, and the same vectors sentence-transformers gives."""
    out = tmp_path / "enc"
    args = [
        "encode",
        "--model",
        minilm_path,
        "--corpus",
        str(beir_dir),
        "--queries",
        str(beir_dir),
        "--out",
        str(out),
        "--precision",
        "fp32",  # compared with sentence-transformers' fp32 vectors at 1e-4
    ]
    assert cli([*args, "--shard-size", "4", "--max-shards", "1"]) == 0
    assert len(list(out.glob("doc.shard-*.npy"))) == 1
    assert cli([*args, "--shard-size", "4"]) == 0
    doc_ids, doc_emb = load_embeddings(out, "doc")
    query_ids, query_emb = load_embeddings(out, "query")
    assert query_ids == ["q1", "q4"] and len(doc_ids) == 10 and doc_emb.shape == (10, 384)
    meta = read_meta(out, "doc")
    assert meta["normalized"] is True and meta["complete"] is True

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm_path, device="cpu")
    with open(beir_dir / "corpus.jsonl", encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f]
    texts = [(c["title"] + " " + c["text"]) if c["title"] else c["text"] for c in corpus]
    ref = st.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(np.asarray(doc_emb), ref, atol=1e-4)
    np.testing.assert_allclose(query_emb[0], st.encode(["why do cats purr"])[0], atol=1e-4)


@pytest.mark.slow
def test_cli_encode_precision_real_minilm(minilm_path, beir_dir, tmp_path, capsys, monkeypatch):
    """--precision reaches the model: bf16 autocast vectors are close to fp32 ones, not equal; stored as float32."""
    from densetune import precision

    embeddings = {}
    for choice in ("fp32", "bf16"):
        monkeypatch.setattr(precision, "_announced", set())  # announced once per process: each run here
        out = tmp_path / choice
        args = ["encode", "--model", minilm_path, "--corpus", str(beir_dir), "--out", str(out)]
        assert cli([*args, "--precision", choice]) == 0
        assert f"precision {'bf16 weights' if choice == 'bf16' else 'fp32'} on cpu: asked for" in (
            capsys.readouterr().out
        )
        ids, emb = load_embeddings(out, "doc")
        assert emb.dtype == np.float32 and len(ids) == 10
        embeddings[choice] = np.asarray(emb)
    fp32, bf16 = embeddings["fp32"], embeddings["bf16"]
    cosine = (fp32 * bf16).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    assert cosine.min() > 0.99
    assert not np.array_equal(fp32, bf16)  # bf16 arithmetic really ran


def test_encoder_meta_records_bf16_weights_and_autocast():
    """An encode records what its forwards ran in, whether bf16 came as cast weights (a model loaded for
    inference) or as autocast, so a resumed encode never mixes bf16 and fp32 shards."""
    from tiny_models import tiny_biencoder

    from densetune.precision import set_inference_precision
    from densetune.retrieval.encode import encoder_meta

    model = tiny_biencoder(dropout=0.0)
    assert encoder_meta(model)["precision"] == "fp32"
    set_inference_precision(model, "bf16")  # autocast over fp32 weights
    assert encoder_meta(model)["precision"] == "bf16"
    owned = tiny_biencoder(dropout=0.0)
    set_inference_precision(owned, "bf16", owned=True)  # weights cast to bf16
    assert encoder_meta(owned)["precision"] == "bf16"
