"""Fixtures for the retrieval tests: a deterministic stub encoder and a tiny BEIR directory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_models import save_tiny_bert


class StubEncoder:
    """Bag-of-words embeddings (each word a fixed random vector from its MD5), L2-normalised.

    Deterministic across processes; counts the texts it embedded, so tests can check what a resumed
    encode re-did.
    """

    def __init__(self, dim: int = 32):
        self.dim = dim
        self.config = SimpleNamespace(normalize=True)
        self.encoded = 0
        self.calls: list[dict] = []

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.md5(word.encode()).digest()[:4], "little")
        return np.random.default_rng(seed).standard_normal(self.dim)

    def encode_texts(self, texts, *, is_query, batch_size=64, show_progress=False, **kwargs):
        self.encoded += len(texts)
        self.calls.append({"n": len(texts), "is_query": is_query, **kwargs})
        out = np.zeros((len(texts), self.dim))
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i] += self._word(word)
            out[i] /= max(np.linalg.norm(out[i]), 1e-9)
        return torch.from_numpy(out).float()


@pytest.fixture
def stub_encoder() -> StubEncoder:
    return StubEncoder()


CORPUS = [
    ("d1", "Cats", "cats purr and sleep all day"),
    ("d2", "Dogs", "dogs bark at the mailman"),
    ("d3", "", "cats and dogs can be friends"),
    ("d4", "Fish", "fish swim in the sea"),
    ("d5", "Birds", "birds fly south in winter"),
    ("d6", "Cats again", "cats purr and sleep all day long"),
    ("d7", "", "why do cats purr"),
    ("d8", "Dogs", "dogs bark at the mailman"),  # same text as d2
    ("d9", "", "the sea is deep and blue"),
    ("d10", "", "winter is cold for birds"),
]
QUERIES = [
    ("q1", "why do cats purr"),
    ("q2", "do dogs bark"),
    ("q3", "where do birds fly in winter"),
    ("q4", "fish"),
]
QRELS = {
    "train": [("q1", "d1", 1), ("q2", "d2", 1), ("q3", "d5", 1)],
    "test": [("q1", "d6", 1), ("q4", "d4", 2)],
}


def write_beir(root: Path, corpus=CORPUS, queries=QUERIES, qrels=QRELS) -> Path:
    """A BEIR directory (CRLF qrels with a header, as BEIR ships them)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for did, title, text in corpus:
            f.write(json.dumps({"_id": did, "title": title, "text": text, "metadata": {}}) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text in queries:
            f.write(json.dumps({"_id": qid, "text": text, "metadata": {}}) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    for split, rows in qrels.items():
        with open(root / "qrels" / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            f.write("query-id\tcorpus-id\tscore\r\n")
            for row in rows:
                f.write("\t".join(map(str, row)) + "\r\n")
    return root


@pytest.fixture
def make_beir():
    """The :func:`write_beir` helper (test modules here are not a package, so they get it as a fixture)."""
    return write_beir


@pytest.fixture
def beir_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DENSETUNE_CACHE", str(tmp_path / "cache"))
    return write_beir(tmp_path / "tiny")


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory, minilm_path) -> str:
    """A 2-layer hidden-32 random BERT reranker (seeded) with the MiniLM tokenizer (score and rerank tests)."""
    return save_tiny_bert(tmp_path_factory.mktemp("reranker"), minilm_path, num_labels=1, head="classifier")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test gets its own Arrow cache, so no test reads another's converted files."""
    monkeypatch.setenv("DENSETUNE_CACHE", str(tmp_path / "cache"))
