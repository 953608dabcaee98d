"""Model-test fixtures: tiny random BERT / Llama folders (SmolLM2's converted folder is in tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import save_tiny_bert, save_tiny_llama


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models run faster on one thread, far faster on a busy 2-core machine (no spin-waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_dir, tmp_path_factory) -> str:
    """Random 2-layer Llama (hidden 32) with SmolLM2's real tokenizer: decoder features in milliseconds."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), smollm2_dir)


@pytest.fixture(scope="session")
def tiny_bert_dir(minilm_path, tmp_path_factory) -> str:
    """Random 2-layer BERT (hidden 32, dropout 0.1) with MiniLM's real WordPiece tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_path, heads=4)
