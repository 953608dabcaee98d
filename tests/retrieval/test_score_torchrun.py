"""``torchrun --nproc_per_node=2 -m densetune score`` on CPU (gloo): chunks are scored in rounds, one chunk
per rank, and rank 0 writes; the output equals one process, and a run stopped part-way resumes with another
number of processes to the same bytes."""

from __future__ import annotations

import json
import subprocess

import pytest
from processes import run_densetune

pytestmark = pytest.mark.slow


def score(model, data, out, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    args = ["score", "--model", model, "--data", str(data), "--out", str(out), "--device", "cpu"]
    return run_densetune(nproc, *args, "--chunk-size", "2", "--no-progress", *extra)


def test_two_cpu_ranks_equal_one_process(reranker_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    with open(data, "w") as f:
        for i in range(11):  # 6 chunks of 2 (the last of 1): 3 rounds on 2 ranks
            negs = [f"negative {i} {j}" for j in range(i % 4)]
            f.write(json.dumps({"query": f"query {i}", "pos": [f"positive {i}"], "neg": negs}) + "\n")

    score(reranker_dir, data, tmp_path / "one.jsonl", 1)
    two = score(reranker_dir, data, tmp_path / "two.jsonl", 2)
    assert two.stdout.count("scored 11 examples") == 1 and "with 2 processes" in two.stdout
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    rows = [json.loads(line) for line in open(tmp_path / "two.jsonl")]
    assert [len(r["neg_scores"]) for r in rows] == [i % 4 for i in range(11)]

    # Stopped after the first round (2 chunks), then finished by one process: the same bytes.
    partial = tmp_path / "resumed.jsonl.partial"
    with pytest.raises(AssertionError):  # the interrupted run exits non-zero, as after Ctrl-C
        score(reranker_dir, data, tmp_path / "resumed.jsonl", 2, "--stop-after-chunks", "1")
    progress = json.loads((partial / "progress.json").read_text())
    assert progress["chunks"] == 2 and progress["examples"] == 4
    score(reranker_dir, data, tmp_path / "resumed.jsonl", 1)
    assert (tmp_path / "resumed.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
