"""Fixtures for the training tests (helpers live in train_helpers.py)."""

from __future__ import annotations

import pytest
from train_helpers import make_tiny_bert


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path) -> str:
    """Tiny random BERT with dropout ON (0.1), so exact resume needs the RNG states."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_path, dropout=0.1)


@pytest.fixture(scope="session")
def tiny_bert_nodrop(tmp_path_factory, minilm_path) -> str:
    """Tiny random BERT without dropout: k ranks and one process must compute the same thing."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert_nodrop"), minilm_path, dropout=0.0)


@pytest.fixture
def one_torch_thread():
    """Tiny models run faster on one thread, and far faster on a busy 2-core machine (no spin-waiting).

    Used by the training tests with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
