"""``torchrun --nproc_per_node=2 -m densetune encode`` on CPU (gloo): each rank encodes its share of the
corpus shards, rank 0 merges, and the result equals a one-process encode (ids and order identical,
embeddings equal up to float rounding); a run stopped part-way resumes with another number of processes."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from processes import run_densetune
from tiny_models import save_tiny_bert

from densetune.retrieval import quantize
from densetune.retrieval.embeddings import load_embeddings

pytestmark = pytest.mark.slow


def encode(model, corpus, out, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    args = ["encode", "--model", model, "--corpus", str(corpus), "--out", str(out), "--device", "cpu"]
    return run_densetune(nproc, *args, "--shard-size", "7", *extra)


def test_two_cpu_ranks_equal_one_process(minilm_path, tmp_path):
    model = save_tiny_bert(tmp_path / "model", minilm_path, dropout=0.0, head="none")
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i in range(40):  # 6 shards (5 of 7 documents, 1 of 5), 3 per rank
            f.write(json.dumps({"_id": f"d{i}", "text": f"document {i} " + "word " * (i % 9)}) + "\n")

    encode(model, corpus, tmp_path / "one", 1)
    two = encode(model, corpus, tmp_path / "two", 2)
    assert two.stdout.count("encoded 40 documents") == 1 and "(2 processes)" in two.stdout  # rank 0 prints
    ids1, emb1 = load_embeddings(tmp_path / "one", "doc")
    ids2, emb2 = load_embeddings(tmp_path / "two", "doc")
    assert ids2 == ids1 == [f"d{i}" for i in range(40)]
    np.testing.assert_allclose(emb2, emb1, atol=1e-5)
    assert not list((tmp_path / "two").glob("doc.shard-*"))  # merged and removed
    meta = json.loads((tmp_path / "two" / "doc.meta.json").read_text())
    assert meta["complete"] and meta["rows"] == 40
    assert "nothing to do" in encode(model, corpus, tmp_path / "two", 2).stdout

    # Stopped after one shard per rank, then finished by a single process: the same files. Compact codes
    # (binary, with an int8 rescoring store) are quantized from the float shards at the merge, so they are
    # those of the one-process float embeddings.
    compact = ("--dtype", "binary", "--rescore-dtype", "int8")
    part = encode(model, corpus, tmp_path / "resume", 2, "--max-shards", "1", *compact)
    assert "2/6 done" in part.stdout
    assert len(list((tmp_path / "resume").glob("doc.shard-*.npy"))) == 2
    encode(model, corpus, tmp_path / "resume", 1, *compact)
    ids3, codes = load_embeddings(tmp_path / "resume", "doc", compact=True)
    assert ids3 == ids1
    emb1 = np.asarray(emb1)
    np.testing.assert_allclose(codes.ranges, np.stack([emb1.min(0), emb1.max(0)]), atol=1e-5)
    # equal up to float rounding: a code may sit one sign (binary) or one step (int8) apart
    assert np.mean(codes.codes == quantize.quantize_binary(emb1)) > 0.99
    assert np.abs(codes.store.astype(int) - quantize.quantize_int8(emb1, codes.ranges)).max() <= 1
