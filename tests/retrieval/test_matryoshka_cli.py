"""``--dim`` on encode, search, mine and evaluate: the first K dimensions, renormalised, from one cut."""

from __future__ import annotations

import json

import numpy as np
import pytest

from densetune.cli import main as cli
from densetune.errors import DataError
from densetune.models.matryoshka import TruncatedEncoder, truncate
from densetune.retrieval.embeddings import load_embeddings, read_meta
from densetune.retrieval.mine import MiningConfig, mine


def test_mine_with_dim_encodes_the_cut_and_refuses_to_mix_it_with_whole_embeddings(
    beir_dir, stub_encoder, tmp_path
):
    emb = tmp_path / "emb"
    config = MiningConfig(num_negatives=2, range_max=6)

    def run(name, model=stub_encoder, **options):
        mine(model, beir_dir, tmp_path / name, config=config, show_progress=False, **options)
        return (tmp_path / name).read_text()

    first = run("a.jsonl", corpus_embeddings=emb, dim=8)
    _, doc = load_embeddings(emb, "doc")
    assert doc.shape == (10, 8) and read_meta(emb, "doc")["truncate_dim"] == 8
    # renormalised, since the stub normalises
    np.testing.assert_allclose(np.linalg.norm(doc, axis=1), 1.0, atol=1e-6)
    # the same as mining with an encoder that cuts by itself
    assert run("b.jsonl", TruncatedEncoder(stub_encoder, 8)) == first
    with pytest.raises(DataError, match="truncate_dim: 8 -> None"):
        run("c.jsonl", corpus_embeddings=emb)


@pytest.mark.slow
def test_cli_dim_on_encode_search_evaluate_real_minilm(minilm_path, beir_dir, tmp_path, capsys):
    """encode --dim 128 = the whole encoding cut and renormalised; search --dim over the whole embeddings finds
    the same run; evaluate --dim 384,128,64 prints one row per dim, from one encoding, and the 128 row is
    that run's metrics."""
    full, cut = tmp_path / "full", tmp_path / "d128"
    common = f"--model {minilm_path} --corpus {beir_dir} --queries {beir_dir} --precision fp32".split()
    assert cli(["encode", *common, "--out", str(full)]) == 0
    assert cli(["encode", *common, "--out", str(cut), "--dim", "128"]) == 0
    for kind in ("query", "doc"):
        _, whole = load_embeddings(full, kind)
        _, small = load_embeddings(cut, kind)
        assert whole.shape[1] == 384 and small.shape[1] == 128
        np.testing.assert_allclose(small, truncate(np.asarray(whole), 128, True), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1.0, atol=1e-5)
    assert read_meta(cut, "doc")["truncate_dim"] == 128

    run_cut, run_full = tmp_path / "cut.trec", tmp_path / "full.trec"
    assert cli(f"search --queries {cut} --corpus {cut} --out {run_cut} --top-k 5".split()) == 0
    assert cli(f"search --queries {full} --corpus {full} --out {run_full} --top-k 5 --dim 128".split()) == 0

    def ranking(path):
        rows = [line.split() for line in path.read_text().splitlines()]
        return [(r[0], r[2]) for r in rows], np.array([float(r[4]) for r in rows])

    (order_a, scores_a), (order_b, scores_b) = ranking(run_cut), ranking(run_full)
    assert order_a == order_b
    np.testing.assert_allclose(scores_a, scores_b, atol=1e-5)

    capsys.readouterr()
    metrics = tmp_path / "m.json"
    eval_args = ["evaluate", "--model", minilm_path, "--data", str(beir_dir), "--precision", "fp32"]
    assert (
        cli([*eval_args, "--dim", "384,128,64", "--out", str(metrics), "--metrics", "ndcg@10,recall@5"]) == 0
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["dim", "ndcg@10", "recall@5"]
    assert [line.split()[0] for line in printed[1:4]] == ["384", "128", "64"]
    report = json.loads(metrics.read_text())
    assert set(report["metrics_by_dim"]) == {"384", "128", "64"} and report["dim"] == 384
    assert report["metrics"] == report["metrics_by_dim"]["384"]
    from_run = tmp_path / "run.json"
    evaluate_run = f"evaluate --run {run_cut} --qrels {beir_dir} --metrics ndcg@10,recall@5 --out {from_run}"
    assert cli(evaluate_run.split()) == 0
    for name, value in json.loads(from_run.read_text())["metrics"].items():
        assert report["metrics_by_dim"]["128"][name] == pytest.approx(value, abs=1e-6)

    capsys.readouterr()
    assert cli([*eval_args, "--dim", "512"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--dim 512 is out of range: the model's embeddings have 384 dimensions" in err and "\n" not in err
