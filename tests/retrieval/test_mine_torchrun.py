"""``torchrun --nproc_per_node=2 -m densetune mine`` on CPU (gloo): each rank encodes part of the corpus and
mines a slice of the queries (random sampling and fill seeded by the global query index), rank 0 writes; the
file, the statistics and the scores equal a one-process run."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from processes import run_densetune
from tiny_models import save_tiny_bert

pytestmark = pytest.mark.slow


def mine(model, data, out, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    args = ["mine", "--model", model, "--data", str(data), "--out", str(out), "--device", "cpu"]
    return run_densetune(nproc, *args, *extra)


@pytest.mark.parametrize("embeddings", [False, True], ids=["in-memory", "corpus-embeddings"])
def test_two_cpu_ranks_equal_one_process(minilm_path, tmp_path, make_beir, embeddings):
    model = save_tiny_bert(tmp_path / "model", minilm_path, dropout=0.0, head="none")
    corpus = [(f"d{i}", "", f"passage {i} about topic {i % 7} " + "term " * (i % 5)) for i in range(60)]
    queries = [(f"q{i}", f"question on topic {i % 7} number {i}") for i in range(25)]
    qrels = {"train": [(f"q{i}", f"d{(3 * i) % 60}", 1) for i in range(25)]}
    data = make_beir(tmp_path / "beir", corpus, queries, qrels)
    flags = ["--num-negatives", "4", "--sampling", "random", "--range-max", "20", "--fill", "random",
             "--with-scores", "--relative-margin", "0.05"]  # fmt: skip

    outs = {}
    for n in (1, 2):
        extra = [*flags, "--corpus-embeddings", str(tmp_path / f"emb{n}")] if embeddings else flags
        proc = mine(model, data, tmp_path / f"mined{n}.jsonl", n, *extra)
        outs[n] = proc.stdout
    assert outs[2].count("wrote ") == 1 and "(2 processes)" in outs[2]
    one = [json.loads(line) for line in open(tmp_path / "mined1.jsonl")]
    two = [json.loads(line) for line in open(tmp_path / "mined2.jsonl")]
    assert [r["query"] for r in two] == [r["query"] for r in one] and len(one) == 25
    assert [r["neg"] for r in two] == [r["neg"] for r in one]
    assert sum(len(r["neg"]) for r in one) > 25  # something was mined
    for a, b in zip(one, two):
        np.testing.assert_allclose(b["neg_scores"], a["neg_scores"], atol=1e-5)
    stats1 = json.loads(open(tmp_path / "mined1.jsonl.mine.json").read())["stats"]
    stats2 = json.loads(open(tmp_path / "mined2.jsonl.mine.json").read())["stats"]
    for key in (
        "queries",
        "negatives",
        "short_queries",
        "empty_queries",
        "filled_queries",
        "filled",
        "skipped",
    ):
        assert stats2[key] == stats1[key], key
