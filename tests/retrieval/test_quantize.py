"""quantize.py and compact search: int8 / binary codes, their files through encode, Hamming top-k, float
rescoring, the CLI on the real MiniLM, and the one-line refusals of codes where floats are expected."""

from __future__ import annotations

import json

import numpy as np
import pytest

from densetune.cli import main as cli
from densetune.data.inputs import DocSource
from densetune.errors import DataError, DensetuneError
from densetune.retrieval import quantize
from densetune.retrieval.embeddings import load_embeddings, read_meta
from densetune.retrieval.encode import encode_corpus, encode_queries
from densetune.retrieval.search import SearchConfig, compact_search, exact_search


def _unit(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(seed=0, n=600, dim=48, centers=12):
    """Normalised points around a few centres (near neighbours exist, as in real embeddings)."""
    rng = np.random.default_rng(seed)
    c = _unit(rng, centers, dim)
    x = c[rng.integers(0, centers, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_int8_round_trip_within_half_a_step_and_ends_of_the_range():
    x = _clustered()
    ranges = quantize.calibrate_int8([x[:100], x[100:]])  # blocks give the same ranges as one pass
    np.testing.assert_array_equal(ranges, np.stack([x.min(0), x.max(0)]))
    codes = quantize.quantize_int8(x, ranges)
    assert codes.dtype == np.int8 and codes.shape == x.shape
    step = (ranges[1] - ranges[0]) / 255
    err = np.abs(quantize.dequantize_int8(codes, ranges) - x)
    assert (err <= step / 2 + 1e-6).all()
    assert (codes[x.argmin(0), np.arange(x.shape[1])] == -128).all()
    assert (codes[x.argmax(0), np.arange(x.shape[1])] == 127).all()
    # outside the calibrated range: clipped; a constant dimension: one code, decoded exactly
    assert quantize.quantize_int8(ranges[1:] + 1, ranges).min() == 127
    flat = np.full((3, 2), 0.25, dtype=np.float32)
    r = quantize.calibrate_int8([flat])
    np.testing.assert_allclose(quantize.dequantize_int8(quantize.quantize_int8(flat, r), r), flat)


def test_binary_round_trip_is_the_sign():
    x = np.array([[0.5, -1, 0, 2, -0.1, 3, 1, -2, 0.1, -4]], dtype=np.float32)  # 10 dims: two bytes
    bits = quantize.quantize_binary(x)
    assert bits.shape == (1, 2) and bits.dtype == np.uint8
    np.testing.assert_array_equal(quantize.unpack_binary(bits, 10), np.where(x > 0, 1, -1))


def _hamming_reference(qb, db):
    """Brute force: every pair's popcount(xor)."""
    return np.bitwise_count(qb[:, None, :] ^ db[None, :, :]).sum(-1)


def test_binary_search_equals_brute_force_hamming():
    rng = np.random.default_rng(1)
    docs, queries = quantize.quantize_binary(_clustered(n=500)), quantize.quantize_binary(_unit(rng, 9, 48))
    k = 25
    dist, rows = quantize.hamming_search(queries, docs, k, chunk=64)  # several chunks added
    ref = _hamming_reference(queries, docs)
    ref_sorted = np.sort(ref, axis=1)[:, :k]
    np.testing.assert_array_equal(dist, ref_sorted)
    np.testing.assert_array_equal(np.take_along_axis(ref, rows, 1), dist)  # the rows really are that far
    for q in range(len(queries)):
        inside = np.flatnonzero(ref[q] < ref_sorted[q, -1])  # strictly better than the k-th: all kept
        assert set(inside) <= set(rows[q].tolist())
        tied = dist[q] == dist[q][:, None]
        assert all(np.all(np.diff(rows[q][tied[i]]) > 0) for i in range(k))  # ties by ascending row


@pytest.mark.parametrize("dtype", ["int8", "binary"])
def test_rescoring_recovers_the_exact_float_top_k(dtype):
    x, q = _clustered(n=300), _clustered(seed=5, n=7)
    ranges = quantize.calibrate_int8([x])
    exact_s, exact_r = exact_search(q, x, 10)
    # candidates covering the corpus + float vectors: exactly the float search
    corpus = quantize.CompactCorpus(
        quantize.encode_rows(x, dtype, ranges), dtype, x.shape[1], ranges, store=x
    )
    s, r = compact_search(q, corpus, 10, SearchConfig(rescore_multiplier=30))
    np.testing.assert_array_equal(r, exact_r)
    np.testing.assert_allclose(s, exact_s, atol=1e-6)
    # fewer candidates: rescoring the codes' best 4x gives back what the codes' own order loses (int8 here
    # all of the exact top-10; binary, coarser at 48 bits, more of it)
    recall = {
        m: np.mean(
            [
                len(set(a) & set(b))
                for a, b in zip(compact_search(q, corpus, 10, SearchConfig(rescore_multiplier=m))[1], exact_r)
            ]
        )
        for m in (0, 4, 10)
    }
    assert recall[0] < recall[4] <= recall[10]
    if dtype == "int8":
        assert recall[4] == 10


def _docs(n=23):
    rng = np.random.default_rng(3)
    words = ["cats", "dogs", "fish", "sea", "birds", "winter", "purr", "bark", "blue", "deep"]
    texts = [" ".join(rng.choice(words, 5)) + f" doc{i}" for i in range(n)]
    return DocSource.from_lists([f"d{i}" for i in range(n)], texts)


def test_encode_int8_resumes_calibrates_on_the_whole_corpus_and_search_reuses_the_ranges(
    stub_encoder, tmp_path
):
    source = _docs()
    encode_corpus(stub_encoder, source, tmp_path / "float", shard_size=5, show_progress=False)
    _, floats = load_embeddings(tmp_path / "float", "doc")
    # stopped after two shards (float32 shards on disk), then finished: the codes of the one-shot run
    part = encode_corpus(
        stub_encoder, source, tmp_path / "i8", dtype="int8", shard_size=5, max_shards=2, show_progress=False
    )
    assert not part.complete
    assert np.load(tmp_path / "i8" / "doc.shard-00000.npy").dtype == np.float32
    encode_corpus(stub_encoder, source, tmp_path / "i8", dtype="int8", shard_size=5, show_progress=False)
    ranges = quantize.load_ranges(tmp_path / "i8" / "doc.int8-ranges.npy", 32)
    np.testing.assert_allclose(ranges, np.stack([floats.min(0), floats.max(0)]))  # every shard counted
    ids, corpus = load_embeddings(tmp_path / "i8", "doc", compact=True)
    assert isinstance(corpus, quantize.CompactCorpus) and corpus.dtype == "int8" and len(ids) == 23
    np.testing.assert_array_equal(corpus.codes, quantize.quantize_int8(floats, ranges))
    meta = read_meta(tmp_path / "i8", "doc")
    assert meta["dtype"] == "int8" and meta["dim"] == 32 and meta["complete"]
    assert not list((tmp_path / "i8").glob("doc.shard-*"))
    # search scores the float query against the codes with the saved ranges (the dequantized products)
    q = np.asarray(floats[:3]) * 0.9
    s, r = compact_search(q, corpus, 5, SearchConfig(rescore_multiplier=0))
    expected = q @ quantize.dequantize_int8(corpus.codes, ranges).T
    np.testing.assert_allclose(s, np.take_along_axis(expected, r, 1), atol=1e-5)
    np.testing.assert_allclose(s, np.sort(expected, 1)[:, ::-1][:, :5], atol=1e-5)
    # saved ranges reused for another corpus: its codes are on the same scale (values outside clipped)
    path = tmp_path / "more.npy"
    more = floats[:4] * 2
    quantize.write_rows(path, lambda: [more], 4, 32, "int8", ranges)
    np.testing.assert_array_equal(np.load(path), quantize.quantize_int8(more, ranges))


def test_encode_binary_with_an_int8_rescoring_store(stub_encoder, tmp_path):
    source = _docs()
    encode_corpus(stub_encoder, source, tmp_path / "float", shard_size=5, show_progress=False)
    _, floats = load_embeddings(tmp_path / "float", "doc")
    encode_corpus(
        stub_encoder,
        source,
        tmp_path / "bin",
        dtype="binary",
        rescore_dtype="int8",
        shard_size=5,
        show_progress=False,
    )
    _, corpus = load_embeddings(tmp_path / "bin", "doc", compact=True)
    assert corpus.codes.shape == (23, 4) and corpus.rescore_dtype == "int8"
    np.testing.assert_array_equal(corpus.codes, quantize.quantize_binary(floats))
    assert np.abs(corpus.vectors(np.arange(23)) - floats).max() < 0.01
    # another dtype in the same directory is another encode: refused, as any changed setting
    with pytest.raises(DataError, match="rescore_dtype: 'int8' -> None"):
        encode_corpus(
            stub_encoder, source, tmp_path / "bin", dtype="binary", shard_size=5, show_progress=False
        )
    with pytest.raises(DataError, match="dtype: 'binary' -> 'int8'"):
        encode_corpus(stub_encoder, source, tmp_path / "bin", dtype="int8", shard_size=5, show_progress=False)
    with pytest.raises(DensetuneError, match="--rescore-dtype float16 with --dtype float32"):
        encode_corpus(stub_encoder, source, tmp_path / "x", rescore_dtype="float16", show_progress=False)


def test_codes_where_floats_are_expected_are_one_line_errors(stub_encoder, tmp_path, capsys):
    enc = tmp_path / "bin"
    encode_corpus(stub_encoder, _docs(), enc, dtype="binary", show_progress=False)
    encode_queries(
        stub_encoder, ["q1", "q2"], ["cats purr", "dogs bark"], enc, dtype="binary", show_progress=False
    )
    assert np.load(enc / "query.npy").dtype == np.float32  # queries stay float under a compact dtype
    with pytest.raises(DataError, match=r"doc\.npy: holds binary codes .* expected float32 or float16"):
        load_embeddings(enc, "doc")  # what mine and evaluate read
    # a query directory that holds codes
    (tmp_path / "q").mkdir()
    for name in ("npy", "ids", "meta.json"):
        (tmp_path / "q" / f"query.{name}").write_bytes((enc / f"doc.{name}").read_bytes())
    out = str(tmp_path / "run.trec")

    def refused(*argv: str) -> str:
        assert cli(["search", *argv, "--out", out]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        return err

    assert "query.npy: holds binary codes" in refused("--queries", str(tmp_path / "q"), "--corpus", str(enc))
    # a float-only index on codes
    err = refused("--queries", str(enc), "--corpus", str(enc), "--index", "hnsw")
    assert "--index hnsw searches float embeddings; binary codes" in err
    # a Matryoshka cut of codes (packed bits cannot be cut and renormalised)
    err = refused("--queries", str(enc), "--corpus", str(enc), "--dim", "2")
    assert "--dim cuts float embeddings" in err and "holds binary codes" in err
    assert cli(["search", "--queries", str(enc), "--corpus", str(enc), "--out", out]) == 0
    # doc.npy and its meta disagree
    meta = json.loads((enc / "doc.meta.json").read_text())
    (enc / "doc.meta.json").write_text(json.dumps({**meta, "dtype": "float32"}))
    err = refused("--queries", str(enc), "--corpus", str(enc), "--overwrite")
    assert "holds binary rows but doc.meta.json names dtype 'float32'" in err


@pytest.mark.slow
def test_cli_compact_encode_search_evaluate_real_minilm(minilm_path, beir_dir, tmp_path, capsys):
    """The real model: encode --dtype int8 and binary (+ int8 rescoring store), search, evaluate: the runs
    keep the float run's top documents."""
    runs = {}
    for name, extra in [
        ("float32", []),
        ("int8", ["--dtype", "int8"]),
        ("binary", ["--dtype", "binary", "--rescore-dtype", "int8"]),
    ]:
        out = tmp_path / name
        enc = ["encode", "--model", minilm_path, "--corpus", str(beir_dir), "--queries", str(beir_dir)]
        assert cli([*enc, "--out", str(out), *extra]) == 0
        run = tmp_path / f"{name}.trec"
        assert (
            cli(["search", "--queries", str(out), "--corpus", str(out), "--top-k", "5", "--out", str(run)])
            == 0
        )
        said = capsys.readouterr().out
        assert {"int8": "(int8 codes)", "binary": "(binary codes, top 4x rescored with int8)"}.get(
            name, ""
        ) in said
        metrics = tmp_path / f"{name}.json"
        assert cli(["evaluate", "--run", str(run), "--qrels", str(beir_dir), "--out", str(metrics)]) == 0
        runs[name] = (run.read_text().splitlines(), json.loads(metrics.read_text())["metrics"])
    assert (tmp_path / "binary" / "doc.npy").stat().st_size < (
        tmp_path / "float32" / "doc.npy"
    ).stat().st_size / 16
    for name in ("int8", "binary"):
        top = [line.split()[:3] for line in runs[name][0] if line.split()[3] == "1"]
        assert top == [line.split()[:3] for line in runs["float32"][0] if line.split()[3] == "1"]
        assert runs[name][1]["ndcg@10"] == pytest.approx(runs["float32"][1]["ndcg@10"], abs=0.02)
