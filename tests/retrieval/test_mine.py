"""mine.py: each selection rule on small hand-made arrays, seeded sampling, the file driver and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from densetune.cli import main as cli
from densetune.errors import DensetuneError
from densetune.retrieval import negatives as negatives_module
from densetune.retrieval.mine import MiningConfig, mine, mine_hard_negatives


def arrays(scores_per_query: list[list[float]]):
    """Embeddings whose inner products are exactly the given scores.

    Query j is the unit vector e_j; document i of query j is ``score * e_j``, so it scores ``score`` for
    query j and 0 for the others. Documents are named ``q{j}d{i}``.
    """
    n_q = len(scores_per_query)
    q = np.eye(n_q, dtype=np.float32)
    docs, ids = [], []
    for j, scores in enumerate(scores_per_query):
        for i, s in enumerate(scores):
            v = np.zeros(n_q, dtype=np.float32)
            v[j] = s
            docs.append(v)
            ids.append(f"q{j}d{i}")
    return q, np.stack(docs), ids


SCORES = [1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]  # q0d0 is the positive


def names(mined, ids, query=0):
    return [ids[r] for r in mined.indices[query]]


def run(config, scores=SCORES, positives=(("q0d0",),), **kw):
    q, d, ids = arrays([scores])
    return mine_hard_negatives(q, [list(p) for p in positives], d, ids, config, **kw), ids


def test_positive_is_excluded_and_takes_no_rank():
    mined, ids = run(MiningConfig(num_negatives=3, relative_margin=None))
    assert names(mined, ids) == ["q0d1", "q0d2", "q0d3"]
    assert mined.stats.skipped["positive"] == 1
    np.testing.assert_allclose(mined.scores[0], [0.95, 0.9, 0.8])
    np.testing.assert_allclose(mined.positive_scores[0], [1.0])


def test_rank_window():
    mined, ids = run(MiningConfig(num_negatives=3, range_min=2, range_max=5, relative_margin=None))
    assert names(mined, ids) == ["q0d3", "q0d4", "q0d5"]
    mined, ids = run(MiningConfig(num_negatives=3, range_min=7, range_max=20, relative_margin=None))
    assert names(mined, ids) == ["q0d8", "q0d9"]  # only two left after rank 7
    assert mined.stats.short_queries == 1 and mined.stats.empty_queries == 0


def test_fill_random_tops_up_short_queries_outside_the_candidates():
    """Query 0's positive scores low, so the margin leaves it nothing; fill=random keeps it in training with
    documents from outside its candidates, seeded, scored by the model, after any mined ones."""
    hard = [0.3, 0.299, 0.298, 0.297]  # q0d0 positive; every other q0 doc within 5% of it
    easy = [1.0, 0.8, 0.7, 0.6, 0.5, 0.4]  # q1: plenty of negatives
    q, d, ids = arrays([hard, easy])
    cfg = dict(num_negatives=2, range_max=3, relative_margin=0.05)
    positives = [["q0d0"], ["q1d0"]]
    plain = mine_hard_negatives(q, positives, d, ids, MiningConfig(**cfg))
    assert plain.stats.empty_queries == 1 and plain.stats.filled == 0
    mined = mine_hard_negatives(q, positives, d, ids, MiningConfig(**cfg, fill="random", seed=3))
    got = names(mined, ids)
    assert len(got) == 2 and len(set(got)) == 2
    retrieved = {"q0d0", "q0d1", "q0d2", "q0d3"}  # q0's top candidates (every q0 doc) are never a fill
    assert not set(got) & retrieved and all(n.startswith("q1") for n in got)
    np.testing.assert_allclose(mined.scores[0], 0.0)  # q1 documents score 0 for query 0
    assert names(mined, ids, 1) == names(plain, ids, 1)  # queries that were not short are untouched
    assert (mined.stats.filled_queries, mined.stats.filled, mined.stats.empty_queries) == (1, 2, 0)
    assert "topped up with 2 random corpus negatives" in mined.stats.summary()
    again = mine_hard_negatives(q, positives, d, ids, MiningConfig(**cfg, fill="random", seed=3))
    assert names(again, ids) == got
    with pytest.raises(DensetuneError, match="fill"):
        MiningConfig(fill="bm25")


def test_absolute_margin():
    scores = [0.8, 0.75, 0.71, 0.7, 0.65, 0.5]
    mined, ids = run(MiningConfig(num_negatives=3, absolute_margin=0.1, relative_margin=None), scores)
    assert names(mined, ids) == ["q0d3", "q0d4", "q0d5"]  # above 0.8 - 0.1 dropped, 0.7 kept
    assert mined.stats.skipped["absolute_margin"] == 2


def test_relative_margin_is_topk_percpos():
    scores = [0.8, 0.79, 0.77, 0.76, 0.75, 0.5]
    mined, ids = run(MiningConfig(num_negatives=2, relative_margin=0.05), scores)
    assert names(mined, ids) == ["q0d3", "q0d4"]  # 95% of 0.8 = 0.76 kept, above dropped
    assert mined.stats.skipped["relative_margin"] == 2


def test_relative_margin_with_a_negative_positive_score():
    # threshold p - |p| * m = -0.5 - 0.05 = -0.55: must not be raised by a negative p
    scores = [-0.5, -0.52, -0.56, -0.6]
    mined, ids = run(MiningConfig(num_negatives=2, relative_margin=0.1), scores)
    assert names(mined, ids) == ["q0d2", "q0d3"]


def test_margins_use_the_lowest_positive():
    scores = [1.0, 0.9, 0.6, 0.55, 0.5]
    mined, ids = run(
        MiningConfig(num_negatives=2, absolute_margin=0.0, relative_margin=None), scores, (("q0d0", "q0d2"),)
    )
    assert names(mined, ids) == ["q0d3", "q0d4"]  # 0.9 is above the weaker positive 0.6


def test_max_and_min_score():
    mined, ids = run(MiningConfig(num_negatives=9, relative_margin=None, max_score=0.85, min_score=0.45))
    assert names(mined, ids) == ["q0d3", "q0d4", "q0d5", "q0d6"]
    assert mined.stats.skipped["max_score"] == 2 and mined.stats.skipped["min_score"] == 3


def test_query_text_and_positive_text_and_duplicate_text():
    q, d, ids = arrays([SCORES])
    keys = np.arange(len(ids), dtype=np.int64) + 100
    keys[1] = 7  # same text as the query
    keys[2] = 8  # same text as the positive (another id)
    keys[4] = keys[3]  # duplicate of q0d3
    mined = mine_hard_negatives(
        q,
        [["q0d0"]],
        d,
        ids,
        MiningConfig(num_negatives=3, relative_margin=None),
        doc_keys=keys,
        query_keys=[7],
        positive_keys=[[8]],
    )
    assert names(mined, ids) == ["q0d3", "q0d5", "q0d6"]
    skipped = {r: n for r, n in mined.stats.skipped.items() if n}
    assert skipped == {"positive": 2, "query_text": 1, "duplicate": 1}


def test_two_key_columns_match_on_any_and_dedup_on_the_first():
    q, d, ids = arrays([SCORES])
    keys = np.stack([np.arange(len(ids)) + 100, np.arange(len(ids)) + 500], axis=1).astype(np.int64)
    keys[1, 1] = 7  # bare text equals the query (title + text does not)
    keys[3, 1] = keys[2, 1]  # same bare text, different titles: not a duplicate
    mined = mine_hard_negatives(
        q,
        [["q0d0"]],
        d,
        ids,
        MiningConfig(num_negatives=3, relative_margin=None),
        doc_keys=keys,
        query_keys=[7],
    )
    assert names(mined, ids) == ["q0d2", "q0d3", "q0d4"]


def test_repeated_ids_count_once_and_positive_id_everywhere():
    q, d, ids = arrays([SCORES])
    ids[3] = "q0d2"  # an id repeated in doc_ids (two corpora concatenated, say)
    ids[5] = "q0d0"  # the positive's id again
    mined = mine_hard_negatives(q, [["q0d0"]], d, ids, MiningConfig(num_negatives=4, relative_margin=None))
    assert [ids[r] for r in mined.indices[0]] == ["q0d1", "q0d2", "q0d4", "q0d6"]


def test_random_sampling_is_seeded_reproducible_and_block_independent(monkeypatch):
    rng = np.random.default_rng(0)
    scores = [sorted(rng.uniform(0, 0.9, 40).tolist() + [1.0], reverse=True) for _ in range(5)]
    q, d, ids = arrays(scores)
    positives = [[f"q{j}d0"] for j in range(5)]
    config = MiningConfig(num_negatives=5, range_max=30, sampling="random", seed=3)
    a = mine_hard_negatives(q, positives, d, ids, config)
    b = mine_hard_negatives(q, positives, d, ids, config)
    assert [x.tolist() for x in a.indices] == [x.tolist() for x in b.indices]
    monkeypatch.setattr(negatives_module, "_BLOCK", 2)
    c = mine_hard_negatives(q, positives, d, ids, config)
    assert [x.tolist() for x in a.indices] == [x.tolist() for x in c.indices]
    other = mine_hard_negatives(
        q, positives, d, ids, MiningConfig(num_negatives=5, range_max=30, sampling="random", seed=4)
    )
    assert [x.tolist() for x in a.indices] != [x.tolist() for x in other.indices]
    for rows, s in zip(a.indices, a.scores):
        assert len(rows) == 5 and list(s) == sorted(s, reverse=True)  # returned in rank order
    top = mine_hard_negatives(q, positives, d, ids, MiningConfig(num_negatives=5, range_max=30))
    assert [x.tolist() for x in a.indices] != [x.tolist() for x in top.indices]


def test_memmap_float16_corpus(tmp_path):
    q, d, ids = arrays([SCORES, SCORES[::-1]])
    np.save(tmp_path / "doc.npy", d.astype(np.float16))
    mm = np.load(tmp_path / "doc.npy", mmap_mode="r")
    mined = mine_hard_negatives(
        q, [["q0d0"], ["q1d9"]], mm, ids, MiningConfig(num_negatives=2, relative_margin=None)
    )
    assert names(mined, ids, 0) == ["q0d1", "q0d2"]
    assert names(mined, ids, 1) == ["q1d8", "q1d7"]


def test_positive_outside_the_corpus_needs_scores_for_margins():
    q, d, ids = arrays([SCORES[1:]])
    with pytest.raises(DensetuneError, match="positive_scores"):
        mine_hard_negatives(q, [["elsewhere"]], d, ids, MiningConfig(num_negatives=2))
    mined = mine_hard_negatives(
        q, [["elsewhere"]], d, ids, MiningConfig(num_negatives=2), positive_scores=[[0.9]]
    )
    # 0.95 and 0.9 are above 0.9 - 0.05 * 0.9 = 0.855 and dropped; 0.8 and 0.7 kept
    assert [ids[r] for r in mined.indices[0]] == ["q0d2", "q0d3"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_negatives": 0}, "num_negatives"),
        ({"range_min": 5, "range_max": 5}, "range_min"),
        ({"num_negatives": 20, "range_max": 10}, "window"),
        ({"relative_margin": -0.1}, "relative_margin"),
        ({"min_score": 0.9, "max_score": 0.1}, "min_score"),
        ({"sampling": "hard"}, "sampling"),
    ],
)
def test_config_rejects_with_the_fix(kwargs, match):
    with pytest.raises(DensetuneError, match=match):
        MiningConfig(**kwargs)


def test_stats_summary_and_dict():
    mined, _ = run(MiningConfig(num_negatives=3, relative_margin=None))
    text = mined.stats.summary()
    assert "mined 1 queries" in text and "positives" in text and "negatives" in text
    d = mined.stats.to_dict()
    assert d["negatives"] == 3 and d["negative_scores"]["max"] == pytest.approx(0.95)
    json.dumps(d)


# ------------------------------------------------------------------------------------------------ files + CLI


def test_mine_beir_train_split_with_stub(beir_dir, stub_encoder, tmp_path):
    from densetune.data.formats import iter_examples

    out = tmp_path / "mined.jsonl"
    stats = mine(
        stub_encoder,
        beir_dir,
        out,
        fmt="flag",
        config=MiningConfig(num_negatives=3, range_max=8, relative_margin=None),
        with_scores=True,
        show_progress=False,
    )
    assert stats.queries == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    by_query = {r["query"]: r for r in rows}
    purr = by_query["why do cats purr"]
    assert purr["pos"] == ["Cats cats purr and sleep all day"]
    assert "why do cats purr" not in purr["neg"]  # d7's text equals the query
    assert len(purr["neg"]) == 3 and len(purr["neg_scores"]) == 3 and len(purr["pos_scores"]) == 1
    bark = by_query["do dogs bark"]
    assert "Dogs dogs bark at the mailman" not in bark["neg"]  # d8 has the positive's text
    for r in rows:
        assert len(set(r["neg"])) == len(r["neg"])
        assert r["neg_scores"] == sorted(r["neg_scores"], reverse=True)
    report = json.loads((tmp_path / "mined.jsonl.mine.json").read_text())
    assert report["config"]["num_negatives"] == 3 and report["stats"]["queries"] == 3
    # the output is valid training data
    assert len(list(iter_examples(out))) == 3


def test_mine_corpus_embeddings_dir_is_reused(beir_dir, stub_encoder, tmp_path):
    config = MiningConfig(num_negatives=2, range_max=6)
    emb = tmp_path / "emb"
    mine(
        stub_encoder,
        beir_dir,
        tmp_path / "a.jsonl",
        corpus_embeddings=emb,
        config=config,
        show_progress=False,
    )
    assert (emb / "doc.npy").is_file()
    before = stub_encoder.encoded
    mine(
        stub_encoder,
        beir_dir,
        tmp_path / "b.jsonl",
        corpus_embeddings=emb,
        config=config,
        show_progress=False,
    )
    assert stub_encoder.encoded == before  # neither the corpus nor the queries were encoded again
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert (emb / "mine_query.npy").is_file() and not (emb / "query.npy").exists()
    # a third run reads both again; saved query embeddings of other texts are encoded anew (queries only)
    before = stub_encoder.encoded
    mine(
        stub_encoder,
        beir_dir,
        tmp_path / "c.jsonl",
        corpus_embeddings=emb,
        config=config,
        show_progress=False,
    )
    assert stub_encoder.encoded == before
    (emb / "mine_query.meta.json").write_text('{"complete": true, "texts_sha1": "other"}')
    mine(
        stub_encoder,
        beir_dir,
        tmp_path / "d.jsonl",
        corpus_embeddings=emb,
        config=config,
        show_progress=False,
    )
    assert 0 < stub_encoder.encoded - before < 10  # the queries only
    assert (tmp_path / "d.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()


def test_mine_reuses_a_float16_encode_with_other_shards(beir_dir, stub_encoder, tmp_path):
    """The chain docs/scaling.md shows: `encode --dtype float16 --shard-size ...` first, then `mine
    --corpus-embeddings` on the same directory reuses it instead of refusing its layout."""
    from densetune.data.corpus import load_corpus
    from densetune.data.inputs import DocSource
    from densetune.retrieval.encode import encode_corpus, encoder_meta

    emb = tmp_path / "emb"
    meta = encoder_meta(stub_encoder, "", None)
    encode_corpus(
        stub_encoder, DocSource.from_corpus(load_corpus(beir_dir)), emb, dtype="float16", shard_size=3,
        meta=meta, show_progress=False,
    )  # fmt: skip
    before = stub_encoder.encoded
    config = MiningConfig(num_negatives=2, range_max=6)
    mine(
        stub_encoder,
        beir_dir,
        tmp_path / "a.jsonl",
        corpus_embeddings=emb,
        config=config,
        show_progress=False,
    )
    assert stub_encoder.encoded - before < 10  # queries only
    assert (tmp_path / "a.jsonl").stat().st_size > 0


def test_mine_inline_training_file(tmp_path, stub_encoder, monkeypatch):
    monkeypatch.setenv("DENSETUNE_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.jsonl"
    docs = [
        ("a", "red apples are sweet"),
        ("b", "green apples are sour"),
        ("c", "apples grow on trees"),
        ("d", "cars"),
    ]
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))
    train = tmp_path / "train.jsonl"
    train.write_text(
        json.dumps({"query": "sweet apples", "pos_doc": ["red apples are sweet"], "neg_doc": []}) + "\n"
    )
    out = tmp_path / "out.jsonl"
    mine(
        stub_encoder,
        train,
        out,
        corpus=corpus,
        fmt="inline",
        config=MiningConfig(num_negatives=2, range_max=3, relative_margin=None),
        show_progress=False,
    )
    row = json.loads(out.read_text())
    negs = [n if isinstance(n, str) else n["text"] for n in row["neg_doc"]]
    assert "red apples are sweet" not in negs and len(negs) == 2  # positive excluded by text


def test_cli_mine_errors_are_one_line(tmp_path, capsys, beir_dir):
    rc = cli(
        [
            "mine",
            "--model",
            str(tmp_path / "none"),
            "--data",
            str(tmp_path / "missing.jsonl"),
            "--out",
            str(tmp_path / "o"),
            "--corpus",
            str(beir_dir),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    rc = cli(
        [
            "mine",
            "--model",
            "m",
            "--data",
            str(beir_dir),
            "--out",
            str(tmp_path / "o"),
            "--num-negatives",
            "200",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "window" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_mine_real_minilm(minilm_path, scifact_dir, tmp_path, monkeypatch, capsys, make_beir):
    """The real model on a SciFact slice: 120 documents, the train queries whose positives are among them."""
    monkeypatch.setenv("DENSETUNE_CACHE", str(tmp_path / "cache"))
    with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f][:120]
    keep = {c["_id"] for c in corpus}
    qrels = [
        line.rstrip("\r\n").split("\t")
        for line in open(scifact_dir / "qrels" / "train.tsv", encoding="utf-8")
    ][1:]
    qrels = [(q, d, int(s)) for q, d, s in qrels if d in keep]
    qids = {q for q, _, _ in qrels}
    with open(scifact_dir / "queries.jsonl", encoding="utf-8") as f:
        queries = [(o["_id"], o["text"]) for o in map(json.loads, f) if o["_id"] in qids]
    data = make_beir(
        tmp_path / "slice", [(c["_id"], c["title"], c["text"]) for c in corpus], queries, {"train": qrels}
    )
    out = tmp_path / "mined.jsonl"
    rc = cli(
        [
            "mine",
            "--model",
            minilm_path,
            "--data",
            str(data),
            "--out",
            str(out),
            "--num-negatives",
            "3",
            "--with-scores",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "mined" in printed and "positives" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(queries) > 5
    for r in rows:
        assert not set(r["pos"]) & set(r["neg"])
        assert all(s <= 0.95 * min(r["pos_scores"]) + 1e-6 for s in r["neg_scores"])


def test_mine_reads_a_directory_loop_once(beir_dir, stub_encoder, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    record = {"query": "why do cats purr", "pos": ["cats purr and sleep all day"], "neg": []}
    (data / "train.jsonl").write_text(json.dumps(record) + "\n")
    (data / "loop").symlink_to(data, target_is_directory=True)
    out = tmp_path / "mined.jsonl"
    config = MiningConfig(num_negatives=2, range_max=6, relative_margin=None)
    stats = mine(stub_encoder, data, out, corpus=beir_dir, fmt="flag", config=config, show_progress=False)
    assert stats.queries == 1 and len(out.read_text().splitlines()) == 1


@pytest.mark.parametrize("precision", [None, "fp32", "auto", "bf16"])
@pytest.mark.parametrize("normalize", [None, False])
def test_model_folder_metadata_without_loading_equals_the_loaded_models(
    minilm_path, tmp_path_factory, precision, normalize
):
    """Mining from saved embeddings checks them against metadata read from the folder (the model is not
    loaded); it must be what the loaded model reports, or saved embeddings would be reused wrongly."""
    from tiny_models import save_tiny_bert

    from densetune.models.loaders import load_encoder
    from densetune.retrieval.encode import encoder_meta
    from densetune.retrieval.mine import _encoder_and_meta, _LazyEncoder

    folder = tmp_path_factory.mktemp("tiny")
    save_tiny_bert(folder, minilm_path)
    if normalize is not None:
        (folder / "densetune_config.json").write_text(json.dumps({"normalize": normalize}))
    encoder, meta = _encoder_and_meta(str(folder), "cpu", precision, 32)
    assert isinstance(encoder, _LazyEncoder)
    loaded = load_encoder(str(folder), device="cpu", precision=precision)
    assert meta == encoder_meta(loaded, str(folder.resolve()), 32)
    assert meta["normalized"] is (normalize is None)


def test_mining_from_saved_embeddings_does_not_load_the_model(minilm_path, tmp_path, monkeypatch, make_beir):
    from tiny_models import save_tiny_bert

    from densetune.models import loaders

    model = save_tiny_bert(tmp_path / "model", minilm_path)
    corpus = [(f"d{i}", "", f"passage {i} about topic {i % 5}") for i in range(40)]
    queries = [(f"q{i}", f"question on topic {i % 5} number {i}") for i in range(12)]
    data = make_beir(
        tmp_path / "beir", corpus, queries, {"train": [(f"q{i}", f"d{3 * i}", 1) for i in range(12)]}
    )
    args = ["mine", "--model", model, "--data", str(data), "--corpus-embeddings", str(tmp_path / "emb"),
            "--num-negatives", "3", "--range-max", "10", "--device", "cpu", "--with-scores"]  # fmt: skip
    assert cli([*args, "--out", str(tmp_path / "a.jsonl")]) == 0

    def refuse(*a, **k):
        raise AssertionError("the model was loaded although every embedding was saved")

    monkeypatch.setattr(loaders, "load_encoder", refuse)
    assert cli([*args, "--out", str(tmp_path / "b.jsonl")]) == 0
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
