"""metrics.py against trec_eval (pytrec-eval-terrier) to 1e-6: hand cases, ties, graded, missing queries,
SciFact's real qrels and corpus ids, and hypothesis-generated qrels/runs."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from densetune.errors import DensetuneError
from densetune.retrieval.metrics import (
    evaluate,
    evaluate_per_query,
    metrics_with_cutoffs,
    parse_metric,
    rank_documents,
)

pytrec_eval = pytest.importorskip("pytrec_eval")

METRICS = [
    "ndcg@1",
    "ndcg@3",
    "ndcg@10",
    "ndcg",
    "mrr",
    "mrr@3",
    "recall@3",
    "recall@10",
    "map@3",
    "map",
    "p@1",
    "p@5",
]
METRICS += ["accuracy@1", "accuracy@3"]
_TREC = {"ndcg": "ndcg_cut", "recall": "recall", "map": "map_cut", "p": "P", "accuracy": "success"}


def _measure(name: str, k: int | None) -> tuple[str, str]:
    """(pytrec_eval measure to request, result key) for one of our metrics (mrr handled apart)."""
    if k is None:
        return {"ndcg": ("ndcg", "ndcg"), "map": ("map", "map"), "mrr": ("recip_rank", "recip_rank")}[name]
    return f"{_TREC[name]}.{k}", f"{_TREC[name]}_{k}"


def reference(qrels, run, metrics, relevance_level=1):
    """Per-query values computed by pytrec_eval; mrr@k is recip_rank of the run cut at k (trec order)."""
    out: dict[str, dict[str, float]] = {}
    plain = [parse_metric(m) for m in metrics if not (parse_metric(m).name == "mrr" and parse_metric(m).k)]
    measures = {_measure(m.name, m.k)[0] for m in plain}
    ev = pytrec_eval.RelevanceEvaluator(qrels, measures, relevance_level=relevance_level)
    for qid, values in ev.evaluate(run).items():
        out[qid] = {m.label: values[_measure(m.name, m.k)[1]] for m in plain}
    for m in (parse_metric(x) for x in metrics):
        if m.name == "mrr" and m.k:
            cut = {q: {d: docs[d] for d in rank_documents(docs)[: m.k]} for q, docs in run.items()}
            ev = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}, relevance_level=relevance_level)
            for qid, values in ev.evaluate(cut).items():
                out[qid][m.label] = values["recip_rank"]
    return out


def assert_same(mine, ref, tol=1e-6):
    assert set(mine) == set(ref)
    for qid in ref:
        for label, value in ref[qid].items():
            assert mine[qid][label] == pytest.approx(value, abs=tol), (qid, label)


# ------------------------------------------------------------------------------------------------ hand cases


def test_docstring_example():
    qrels = {"q1": {"d1": 1, "d2": 0}}
    run = {"q1": {"d1": 0.2, "d2": 0.9, "d3": 0.1}}
    assert evaluate(qrels, run, metrics=("mrr@10", "p@2")) == {"mrr@10": 0.5, "p@2": 0.5}


def test_ties_broken_by_doc_id_descending_like_trec_eval():
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 0.5, "b": 0.5, "c": 0.5}}
    assert rank_documents(run["q"]) == ["c", "b", "a"]
    mine = evaluate_per_query(qrels, run, ["mrr", "p@1", "ndcg@3"])
    assert mine["q"]["mrr"] == pytest.approx(1 / 3)
    assert_same(mine, reference(qrels, run, ["mrr", "p@1", "ndcg@3"]))


def test_graded_ndcg_by_hand():
    # gains are relevance levels, discount log2(rank + 1), ideal from the qrels
    qrels = {"q": {"a": 2, "b": 1, "c": 3}}
    run = {"q": {"a": 3.0, "b": 2.0, "x": 1.0}}
    dcg = 2 / 1 + 1 / 1.5849625007211563
    idcg = 3 / 1 + 2 / 1.5849625007211563 + 1 / 2
    value = evaluate(qrels, run, ["ndcg@3"])["ndcg@3"]
    assert value == pytest.approx(dcg / idcg)
    assert_same(evaluate_per_query(qrels, run, METRICS), reference(qrels, run, METRICS))


def test_query_without_relevant_documents_scores_zero():
    qrels = {"q1": {"a": 0}, "q2": {"b": 1}}
    run = {"q1": {"a": 1.0}, "q2": {"b": 1.0}}
    per_query = evaluate_per_query(qrels, run, METRICS)
    assert all(v == 0.0 for v in per_query["q1"].values())
    assert_same(per_query, reference(qrels, run, METRICS))


def test_missing_queries_skip_matches_pytrec_eval_and_zero_counts_them():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    run = {"q1": {"a": 1.0}, "q2": {"x": 1.0}, "q9": {"a": 1.0}}  # q3 missing, q9 not judged
    per_query = evaluate_per_query(qrels, run, METRICS)
    assert set(per_query) == {"q1", "q2"}
    assert_same(per_query, reference(qrels, run, METRICS))
    assert evaluate(qrels, run, ["mrr@10"])["mrr@10"] == pytest.approx(0.5)
    zero = evaluate_per_query(qrels, run, ["mrr@10"], missing_queries="zero")
    assert zero["q3"] == {"mrr@10": 0.0}
    assert evaluate(qrels, run, ["mrr@10"], missing_queries="zero")["mrr@10"] == pytest.approx(1 / 3)


def test_ignore_identical_ids_drops_the_query_itself():
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 0.9, "d1": 0.5}}
    assert evaluate(qrels, run, ["mrr@10"])["mrr@10"] == pytest.approx(0.5)
    assert evaluate(qrels, run, ["mrr@10"], ignore_identical_ids=True)["mrr@10"] == pytest.approx(1.0)


def test_relevance_level_two_matches_trec_eval_l2():
    qrels = {"q": {"a": 1, "b": 2, "c": 3, "d": 0}}
    run = {"q": {"a": 0.9, "b": 0.8, "d": 0.7, "c": 0.1, "e": 0.5}}
    assert_same(evaluate_per_query(qrels, run, METRICS, relevance_level=2), reference(qrels, run, METRICS, 2))


def test_empty_inputs():
    assert evaluate({}, {}, ["ndcg@10"]) == {"ndcg@10": 0.0}
    assert evaluate({"q": {"a": 1}}, {}, ["ndcg@10"]) == {"ndcg@10": 0.0}


@pytest.mark.parametrize(
    "spec,label",
    [
        ("NDCG@10", "ndcg@10"),
        ("precision@5", "p@5"),
        ("success@1", "accuracy@1"),
        ("MRR", "mrr"),
        ("map@100", "map@100"),
    ],
)
def test_parse_metric_aliases(spec, label):
    assert parse_metric(spec).label == label


@pytest.mark.parametrize("spec", ["bleu@10", "ndcg@0", "ndcg@x", "recall", "p"])
def test_parse_metric_rejects_with_a_message(spec):
    with pytest.raises(DensetuneError, match="metric"):
        parse_metric(spec)


def test_metrics_with_cutoffs():
    assert metrics_with_cutoffs(["ndcg", "recall@5"], [1, 10]) == ["ndcg@1", "ndcg@10", "recall@5"]


# ------------------------------------------------------------------------------------------------ negative relevance

# pytrec_eval-terrier 0.5.11 corrupts its heap on negative relevance values (aborts or hangs on a later call in
# the same process; below -1 it aborts at once), so each of these cases runs in a fresh interpreter.
_SCRIPT = """
import json, sys, pytrec_eval
qrels, run, measures, level = json.loads(sys.argv[1])
print(json.dumps(pytrec_eval.RelevanceEvaluator(qrels, set(measures), relevance_level=level).evaluate(run)))
"""


def test_negative_relevance_is_not_relevant_like_trec_eval():
    rnd = random.Random(7)
    metrics = ["ndcg@1", "ndcg@3", "ndcg", "map@3", "map", "recall@3", "p@2", "accuracy@2", "mrr"]
    for _ in range(3):
        docs = [f"d{i}" for i in range(rnd.randint(2, 7))]
        qrels = {"q": {d: rnd.choice([-1, -1, 0, 1, 2]) for d in rnd.sample(docs, rnd.randint(1, len(docs)))}}
        run = {
            "q": {
                d: rnd.choice([0.5, round(rnd.random(), 2)])
                for d in rnd.sample(docs, rnd.randint(1, len(docs)))
            }
        }
        measures = [_measure(parse_metric(m).name, parse_metric(m).k) for m in metrics]
        payload = json.dumps([qrels, run, [m for m, _ in measures], 1])
        out = subprocess.run(
            [sys.executable, "-c", _SCRIPT, payload], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        ref = json.loads(out.stdout)
        mine = evaluate_per_query(qrels, run, metrics)
        for m, (_, key) in zip(metrics, measures):
            assert mine["q"][parse_metric(m).label] == pytest.approx(ref["q"][key], abs=1e-6), (m, qrels, run)


# ------------------------------------------------------------------------------------------------ generated


@st.composite
def qrels_and_run(draw):
    docs = [f"d{i}" for i in range(draw(st.integers(1, 15)))]
    queries = [f"q{i}" for i in range(draw(st.integers(1, 4)))]
    qrels, run = {}, {}
    score = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(-5, 5, allow_nan=False, width=32))
    for q in queries:
        if draw(st.booleans()) or not qrels:
            judged = draw(st.lists(st.sampled_from(docs), min_size=1, unique=True))
            qrels[q] = {d: draw(st.integers(0, 3)) for d in judged}
        if draw(st.integers(0, 9)) > 0:
            retrieved = draw(st.lists(st.sampled_from(docs), min_size=1, unique=True))
            run[q] = {d: float(draw(score)) for d in retrieved}
    return qrels, run


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qrels_and_run(), st.sampled_from([1, 2]))
def test_generated_equal_pytrec_eval(data, level):
    qrels, run = data
    assert_same(
        evaluate_per_query(qrels, run, METRICS, relevance_level=level), reference(qrels, run, METRICS, level)
    )


# ------------------------------------------------------------------------------------------------ SciFact


def _scifact(scifact_dir):
    from densetune.data.trec import read_qrels

    qrels = read_qrels(scifact_dir / "qrels" / "test.tsv")
    with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as f:
        doc_ids = [json.loads(line)["_id"] for line in f]
    return qrels, doc_ids


def test_scifact_runs_with_ties_equal_pytrec_eval(scifact_dir):
    qrels, doc_ids = _scifact(scifact_dir)
    rnd = random.Random(0)
    metrics = [
        "ndcg@10",
        "ndcg@100",
        "mrr@10",
        "mrr",
        "recall@100",
        "map@100",
        "p@10",
        "accuracy@1",
        "accuracy@10",
    ]
    for decimals in (1, 3):  # coarse scores: many ties; finer: few
        run = {}
        for i, qid in enumerate(qrels):
            if i % 10 == 9:
                continue  # some queries missing from the run
            docs = rnd.sample(doc_ids, 100)
            docs += [d for d in qrels[qid] if rnd.random() < 0.7]
            run[qid] = {d: round(rnd.random(), decimals) for d in docs}
        mine = evaluate_per_query(qrels, run, metrics)
        assert len(mine) == len(run)
        assert_same(mine, reference(qrels, run, metrics))
        means = evaluate(qrels, run, metrics)
        ref = reference(qrels, run, metrics)
        for label in means:
            assert means[label] == pytest.approx(sum(v[label] for v in ref.values()) / len(ref), abs=1e-6)


def test_scifact_bm25_like_run_equal_pytrec_eval(scifact_dir):
    """A lexical-overlap run (term overlap counts: integer scores, so ties everywhere) on the real data."""
    qrels, _ = _scifact(scifact_dir)
    with open(scifact_dir / "queries.jsonl", encoding="utf-8") as f:
        queries = {o["_id"]: o["text"] for o in map(json.loads, f)}
    with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as f:
        docs = {o["_id"]: set((o["title"] + " " + o["text"]).lower().split()) for o in map(json.loads, f)}
    run = {}
    for qid in list(qrels)[:30]:
        terms = set(queries[qid].lower().split())
        scored = sorted(((len(terms & words), did) for did, words in docs.items()), reverse=True)[:100]
        run[qid] = {did: float(s) for s, did in scored}
    metrics = ["ndcg@10", "mrr@10", "recall@100", "map@100", "p@10", "accuracy@10"]
    assert_same(evaluate_per_query(qrels, run, metrics), reference(qrels, run, metrics))
