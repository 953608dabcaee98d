"""Classic NeMo (seed 003): query files as qrels, the encode / search / evaluate chain, its config names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from densetune.cli import main as cli
from densetune.data.qrels import load_qrels, read_query_file_qrels
from densetune.errors import DataError

REPO = Path(__file__).resolve().parents[2]
NEMO_EVAL = REPO / "examples" / "nemo_eval"


def test_qrels_from_every_source(tmp_path):
    expected = {"q11600": {"d1172": 1}, "q5831": {"d577": 1}}
    queries = tmp_path / "test_queries.jsonl"
    queries.write_text(
        '{"query": "a", "query_id": "q11600", "doc_id": "d1172"}\n{"query": "b", "query_id": "q5831", "doc_id": "d577"}\n'
    )
    assert load_qrels(queries) == read_query_file_qrels(queries) == expected
    beir = tmp_path / "qrels.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\nq11600\td1172\t1\nq5831\td577\t1\n")
    trec = tmp_path / "qrels.trec"
    trec.write_text("q11600 0 d1172 1\nq5831 0 d577 1\n")
    assert load_qrels(beir) == load_qrels(trec) == expected
    # a list of relevant documents; query ids from question_id too
    many = tmp_path / "many.jsonl"
    many.write_text('{"query": "a", "question_id": "x", "doc_id": ["d1", "d2"]}\n')
    assert load_qrels(many) == {"x": {"d1": 1, "d2": 1}}
    # GPT-embedding training JSONL (query_id + doc_id name the positive)
    gpt = tmp_path / "train.jsonl"
    gpt.write_text('{"query": "a", "pos_doc": "p", "neg_doc": "n", "query_id": "q1", "doc_id": "d9"}\n')
    assert load_qrels(gpt) == {"q1": {"d9": 1}}


def test_qrels_from_a_corpus_id_file_and_a_beir_dir(tmp_path):
    corpus_id = REPO / "examples" / "corpus_id" / "train.json"
    data = json.loads(corpus_id.read_text())["data"]
    qrels = load_qrels(corpus_id)
    first = data[0]
    pos = [d["id"] if isinstance(d, dict) else d for d in first["pos_doc"]]
    assert qrels[first["question_id"]] == {p: 1 for p in pos}
    assert len(qrels) == len({r["question_id"] for r in data})


def test_qrels_errors_name_the_line(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text(
        '{"query": "a", "query_id": "q1", "doc_id": "d1"}\n{"query": "b", "query_id": "q2", "doc_id": 5.5}\n'
    )
    with pytest.raises(DataError, match=r"q\.jsonl:2: doc_id: got a number"):
        load_qrels(bad)
    inline = tmp_path / "inline.jsonl"
    inline.write_text('{"query": "a", "pos_doc": "p", "neg_doc": ["n"]}\n')
    with pytest.raises(DataError, match="positives have no document ids"):
        load_qrels(inline)
    with pytest.raises(DataError, match="qrels file not found"):
        load_qrels(tmp_path / "missing.tsv")


@pytest.mark.slow
def test_encode_search_evaluate_chain_on_nemo_files(minilm_path, tmp_path, capsys):
    """Seed 003's inference layout, then "evaluate ... MRR or NDCG", with densetune's commands only."""
    queries, docs = NEMO_EVAL / "test_queries.jsonl", NEMO_EVAL / "test_docs.jsonl"
    q_dir, d_dir = tmp_path / "test_queries", tmp_path / "test_docs"
    assert (
        cli(
            [
                "encode",
                "--model",
                minilm_path,
                "--queries",
                str(queries),
                "--out",
                str(q_dir),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (
        cli(["encode", "--model", minilm_path, "--corpus", str(docs), "--out", str(d_dir), "--device", "cpu"])
        == 0
    )
    # NeMo's layout: query.npy + query.ids, doc.npy + doc.ids, rows aligned with the ids
    q_ids = (q_dir / "query.ids").read_text().split()
    d_ids = (d_dir / "doc.ids").read_text().split()
    assert q_ids == [json.loads(x)["query_id"] for x in queries.read_text().splitlines()]
    assert d_ids == [json.loads(x)["doc_id"] for x in docs.read_text().splitlines()]
    assert np.load(q_dir / "query.npy").shape == (6, 384) and np.load(d_dir / "doc.npy").shape == (10, 384)
    run = tmp_path / "run.trec"
    assert (
        cli(["search", "--queries", str(q_dir), "--corpus", str(d_dir), "--out", str(run), "--top-k", "10"])
        == 0
    )
    out = tmp_path / "metrics.json"
    argv = [
        "evaluate",
        "--run",
        str(run),
        "--qrels",
        str(queries),
        "--metrics",
        "mrr@10,ndcg@10",
        "--out",
        str(out),
    ]
    assert cli(argv) == 0
    report = json.loads(out.read_text())
    assert report["queries"] == 6
    # MiniLM finds every relevant document of these clearly separated pairs at rank 1
    assert report["metrics"]["mrr@10"] == pytest.approx(1.0) and report["metrics"][
        "ndcg@10"
    ] == pytest.approx(1.0)
    capsys.readouterr()


def test_classic_nemo_negative_counts_are_aliases_of_n_passages(tmp_path, caplog):
    import logging

    from densetune.errors import ConfigError
    from densetune.train.config import load_config

    path = tmp_path / "nemo.yaml"
    path.write_text(
        "model:\n  path: m\ndata:\n  train: [t.jsonl]\n  selector:\n    hard_negatives_to_train: 4\n"
    )
    with caplog.at_level(logging.INFO, logger="densetune.train"):
        cfg = load_config(path)
    assert cfg.data.selector["n_passages"] == 5 and "hard_negatives_to_train" not in cfg.data.selector
    assert "hard_negatives_to_train=4 (classic NeMo's name) means n_passages=5" in caplog.text
    assert (
        load_config(
            None, ["model.path=m", "data.train=[t.jsonl]", "data.selector.num_hard_negatives=2"]
        ).data.selector["n_passages"]
        == 3
    )
    # the shipped NeMo-style config takes the override too
    nemo_style = REPO / "configs" / "nemo_style.yaml"
    assert (
        load_config(nemo_style, ["data.selector.hard_negatives_to_train=7"]).data.selector["n_passages"] == 8
    )
    with pytest.raises(ConfigError, match="disagree"):
        load_config(path, ["data.selector.num_hard_negatives=3"])
    with pytest.raises(ConfigError, match=r"data.selector.num_hard_negatives: expected an integer >= 0"):
        load_config(None, ["model.path=m", "data.train=[t.jsonl]", "data.selector.num_hard_negatives=-1"])


@pytest.mark.slow
def test_nemo_style_config_scores_minilm_like_sbert(minilm_path, minilm_tokenizer):
    """configs/nemo_style.yaml's loss (SBERT scoring) on real MiniLM embeddings: equal to scoring only the
    batch's positives plus each query's own negatives by hand, and it trains (gradients reach the model)."""
    import torch

    from densetune.config import instantiate
    from densetune.losses import ContrastiveLoss, loss_inputs
    from densetune.models.biencoder import BiEncoder
    from densetune.train.config import load_config

    cfg = load_config(REPO / "configs" / "nemo_style.yaml", [f"model.path={minilm_path}"])
    assert cfg.loss.contrastive["in_batch_scope"] == "positives" and cfg.data.selector["n_passages"] == 5
    loss_fn = instantiate(cfg.loss.contrastive, "loss.contrastive")
    collate = instantiate(cfg.data.collator, "data.collator", tokenizer=minilm_tokenizer)
    items = [
        {
            "question": f"what is topic {i}",
            "doc_text": [f"topic {i} is thing {i}"] + [f"other {i}.{j}" for j in range(4)],
        }
        for i in range(3)
    ]
    batch = collate(items)
    model = BiEncoder.from_pretrained(minilm_path, pooling="mean", normalize=True)
    q, p = model(batch)
    loss = loss_fn(q, p, **loss_inputs(batch))
    # by hand: query i against the 3 positives (columns 0, 5, 10) and its own 4 negatives
    scores = (q @ p.T).detach() / cfg.loss.contrastive["temperature"]
    expected = []
    for i in range(3):
        cols = [0, 5, 10] + [5 * i + j for j in range(1, 5)]
        row = scores[i, cols]
        expected.append(torch.logsumexp(row, 0) - row[i])
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-4)
    every = ContrastiveLoss(temperature=cfg.loss.contrastive["temperature"])(q, p, **loss_inputs(batch))
    assert every.item() > loss.item()  # "all" adds the other queries' hard negatives
    loss.backward()
    assert any(w.grad is not None and w.grad.abs().sum() > 0 for w in model.parameters())


def test_compat_module_names():
    import torch

    from densetune.compat import nemo

    loss = nemo.sbert_contrastive_loss(temperature=0.5)
    assert loss.in_batch_scope == "positives" and loss.temperature == 0.5
    q, p = torch.eye(2), torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.6, 0.3]])
    from densetune.losses import ContrastiveLoss

    expected = ContrastiveLoss(temperature=0.5, in_batch_scope="positives")(q, p, n_passages=2)
    assert loss(q, p, n_passages=2).item() == expected.item()
    assert nemo.NEGATIVE_ALIASES == ("hard_negatives_to_train", "num_hard_negatives")
    assert nemo.load_qrels(NEMO_EVAL / "test_queries.jsonl")["q11600"] == {"d1172": 1}


def test_evaluate_cli_reports_a_bad_query_file_in_one_line(tmp_path, capsys):
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 0.9 t\n")
    bad = tmp_path / "test_queries.jsonl"
    bad.write_text('{"query": "a", "query_id": "q1", "doc_id": "d1"}\n{"query": "b", "doc_id": "d2"}\n')
    assert cli(["evaluate", "--run", str(run), "--qrels", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test_queries.jsonl:2: query_id: missing" in err[0]
    # a query file without doc_id labels says so, on its first line
    bad.write_text('{"query": "a", "query_id": "q1"}\n')
    assert cli(["evaluate", "--run", str(run), "--qrels", str(bad)]) == 1
    assert "test_queries.jsonl:1: doc_id: missing" in capsys.readouterr().err
