"""search.py: chunked exact search equals brute force; faiss flat equals exact; IVF/HNSW close; the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densetune.cli import main as cli
from densetune.data.trec import read_run
from densetune.errors import DensetuneError
from densetune.retrieval.embeddings import write_embeddings
from densetune.retrieval.search import (
    SearchConfig,
    brute_force_search,
    exact_search,
    faiss_search,
    search,
    search_run,
)


def _data(n_q=37, n_d=501, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_q, dim)).astype(np.float32), rng.standard_normal((n_d, dim)).astype(
        np.float32
    )


@pytest.mark.parametrize("query_block,doc_chunk", [(1024, 32768), (5, 64), (1, 7), (16, 500)])
@pytest.mark.parametrize("top_k", [1, 10, 100])
def test_exact_equals_brute_force(query_block, doc_chunk, top_k):
    q, d = _data()
    scores, idx = exact_search(q, d, top_k, query_block=query_block, doc_chunk=doc_chunk, device="cpu")
    ref_s, ref_i = brute_force_search(q, d, top_k)
    assert scores.shape == idx.shape == (q.shape[0], top_k)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-4)


def test_scores_stay_float32_under_a_callers_bf16_autocast():
    """The trainer evaluates inside its bf16 autocast: the search must not score in bf16."""
    q, d = _data()
    ref_s, ref_i = exact_search(q, d, 10, device="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores, idx = exact_search(q, d, 10, device="cpu")
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(scores, ref_s)


def test_top_k_larger_than_corpus_returns_everything():
    q, d = _data(n_d=13)
    scores, idx = exact_search(q, d, 50, doc_chunk=4)
    assert idx.shape == (q.shape[0], 13)
    assert all(sorted(row) == list(range(13)) for row in idx.tolist())


def test_float16_memmap_corpus_and_normalize(tmp_path):
    q, d = _data()
    path = tmp_path / "doc.npy"
    np.save(path, d.astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    scores, idx = exact_search(q, mm, 20, normalize=True, doc_chunk=100)
    ref_s, ref_i = brute_force_search(q, mm.astype(np.float32), 20, normalize=True)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-4)


def test_tensor_inputs():
    q, d = _data()
    s1, i1 = exact_search(torch.from_numpy(q), torch.from_numpy(d), 5)
    s2, i2 = exact_search(q, d, 5)
    np.testing.assert_array_equal(i1, i2)


def test_ties_are_ordered_by_row():
    q = np.ones((2, 4), dtype=np.float32)
    d = np.ones((9, 4), dtype=np.float32)
    _, idx = exact_search(q, d, 9, doc_chunk=2)
    assert idx.tolist() == [list(range(9))] * 2


def test_faiss_flat_equals_exact():
    q, d = _data(n_d=2000)
    s_exact, i_exact = exact_search(q, d, 50)
    s_flat, i_flat = faiss_search(q, d, 50, SearchConfig(index="flat", doc_chunk=300))
    np.testing.assert_array_equal(i_flat, i_exact)
    np.testing.assert_allclose(s_flat, s_exact, atol=1e-4)


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_neighbours(index):
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((20, 32))
    d = (centers[rng.integers(0, 20, 2000)] + 0.3 * rng.standard_normal((2000, 32))).astype(np.float32)
    q = (centers[rng.integers(0, 20, 50)] + 0.3 * rng.standard_normal((50, 32))).astype(np.float32)
    _, exact = exact_search(q, d, 10, normalize=True)
    _, approx = search(q, d, 10, SearchConfig(index=index, normalize=True, nprobe=8))
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.tolist(), exact.tolist())])
    assert recall >= 0.9


def test_search_run_maps_ids():
    q, d = _data(n_q=3, n_d=6)
    run = search_run(["a", "b", "c"], q, [f"d{i}" for i in range(6)], d, 2)
    assert set(run) == {"a", "b", "c"} and all(len(v) == 2 for v in run.values())
    with pytest.raises(DensetuneError, match="differ in length"):
        search_run(["a"], q, ["d"], d, 2)


def test_bad_shapes_and_options():
    q, d = _data()
    with pytest.raises(DensetuneError, match="dimension"):
        exact_search(q, d[:, :5], 3)
    with pytest.raises(DensetuneError, match="top_k"):
        exact_search(q, d, 0)
    with pytest.raises(DensetuneError, match="unknown index"):
        SearchConfig(index="annoy")


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_search_writes_a_trec_run(tmp_path):
    q, d = _data(n_q=4, n_d=30)
    write_embeddings(tmp_path / "enc", "query", [f"q{i}" for i in range(4)], q)
    write_embeddings(tmp_path / "enc", "doc", [f"d{i}" for i in range(30)], d, dtype="float16")
    out = tmp_path / "run.trec"
    rc = cli(
        [
            "search",
            "--queries",
            str(tmp_path / "enc"),
            "--corpus",
            str(tmp_path / "enc"),
            "--top-k",
            "5",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    run = read_run(out)
    assert set(run) == {"q0", "q1", "q2", "q3"} and all(len(v) == 5 for v in run.values())
    _, ref_i = brute_force_search(q, d.astype(np.float16).astype(np.float32), 5)
    top1 = {qid: max(docs, key=docs.get) for qid, docs in run.items()}
    assert top1 == {f"q{i}": f"d{ref_i[i, 0]}" for i in range(4)}
    rc = cli(
        [
            "search",
            "--queries",
            str(tmp_path / "enc"),
            "--corpus",
            str(tmp_path / "enc"),
            "--out",
            str(out),
            "--index",
            "flat",
            "--overwrite",
        ]
    )
    assert rc == 0


def test_cli_search_missing_or_misaligned_inputs(tmp_path, capsys):
    rc = cli(
        [
            "search",
            "--queries",
            str(tmp_path / "nope"),
            "--corpus",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "query.npy" in err and len(err.strip().splitlines()) == 1
    write_embeddings(tmp_path / "enc", "doc", ["a", "b"], np.zeros((2, 3), np.float32))
    (tmp_path / "enc" / "doc.ids").write_text("a\n")
    write_embeddings(tmp_path / "enc", "query", ["q"], np.zeros((1, 3), np.float32))
    rc = cli(
        [
            "search",
            "--queries",
            str(tmp_path / "enc"),
            "--corpus",
            str(tmp_path / "enc"),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "one row per id" in err and len(err.strip().splitlines()) == 1


@pytest.mark.gpu
def test_exact_search_on_cuda_equals_brute_force():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    q, d = _data(n_q=300, n_d=20000, dim=64)
    scores, idx = exact_search(q, d, 50, device="cuda", doc_chunk=4096, query_block=128)
    ref_s, ref_i = brute_force_search(q, d, 50)
    # GPU float32 sums in another order: compare neighbour sets, not the order of near-ties
    assert np.mean([len(set(a) & set(b)) / 50 for a, b in zip(idx.tolist(), ref_i.tolist())]) > 0.999
    np.testing.assert_allclose(scores, ref_s, atol=1e-3)


@pytest.mark.parametrize("kind,row,value", [("doc", 17, np.nan), ("query", 2, np.inf)])
def test_cli_search_refuses_non_finite_embeddings_naming_file_and_row(tmp_path, capsys, kind, row, value):
    q, d = _data(n_q=4, n_d=30)
    (q if kind == "query" else d)[row, 3] = value
    write_embeddings(tmp_path / "enc", "query", [f"q{i}" for i in range(4)], q)
    write_embeddings(tmp_path / "enc", "doc", [f"d{i}" for i in range(30)], d, dtype="float16")
    out = tmp_path / "run.trec"
    enc = str(tmp_path / "enc")
    rc = cli(["search", "--queries", enc, "--corpus", enc, "--out", str(out)])
    err = capsys.readouterr().err
    name = "q" if kind == "query" else "d"
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert f"{kind}.npy:row {row}: embedding of id '{name}{row}' holds NaN or inf" in err
    assert not out.exists()


def _clustered(n_q=300, n_d=6000, dim=32, seed=3):
    """Normalised embeddings around 40 centres (scores spread as a real model's are)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim))
    d = centres[rng.integers(0, 40, n_d)] + 0.8 * rng.standard_normal((n_d, dim))
    q = centres[rng.integers(0, 40, n_q)] + 0.8 * rng.standard_normal((n_q, dim))
    unit = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, d)]
    return unit[0].astype(np.float32), unit[1].astype(np.float32)


@pytest.mark.parametrize("top_k", [1, 20, 100])
def test_bf16_candidates_give_the_float32_result(monkeypatch, top_k):
    """bf16 products pick candidates, float32 rescoring orders them and the rounding bound proves them:
    the result equals float32 search; the bound proves most queries (else it would be all fallback)."""
    from densetune.retrieval import exact

    q, d = _clustered()
    proved = []
    certified = exact._certified
    monkeypatch.setattr(exact, "_certified", lambda *a: proved.append(certified(*a)) or proved[-1])
    s_bf16, i_bf16 = exact_search(q, d, top_k, precision="bf16", doc_chunk=1000, query_block=64)
    s_fp32, i_fp32 = exact_search(q, d, top_k, precision="fp32", doc_chunk=1000, query_block=64)
    np.testing.assert_array_equal(i_bf16, i_fp32)
    np.testing.assert_allclose(s_bf16, s_fp32, atol=1e-6)
    assert len(proved) == 1 and proved[0].float().mean() > 0.9


def test_bf16_candidates_fall_back_to_float32_where_the_bound_proves_nothing(monkeypatch):
    from densetune.retrieval import exact

    q, d = _clustered(n_q=40)
    monkeypatch.setattr(exact, "_certified", lambda queries, *a: torch.zeros(len(queries), dtype=torch.bool))
    s, i = exact_search(q, d, 30, precision="bf16", doc_chunk=700)
    ref_s, ref_i = brute_force_search(q, d, 30)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(s, ref_s, atol=1e-5)


@pytest.mark.parametrize("n", [100, 4096, 5000, 5003])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_max_top_k_equals_topk(n, dtype):
    from densetune.retrieval.exact import block_topk

    scores = torch.randn(7, n, generator=torch.Generator().manual_seed(n)).to(dtype)
    values, cols = block_topk(scores, 40)
    ref_values, _ = torch.topk(scores, 40, dim=1)
    torch.testing.assert_close(values, ref_values)
    torch.testing.assert_close(torch.gather(scores, 1, cols), values)


def test_unknown_search_precision_is_refused():
    q, d = _data()
    with pytest.raises(DensetuneError, match="precision"):
        exact_search(q, d, 3, precision="fp8")
