"""Model-test fixtures: SmolLM2 converted from its GGUF once (cached), tiny random BERT / Llama folders."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models run faster on one thread, far faster on a busy 2-core machine (no spin-waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cache_root() -> Path:
    """Where converted test models are kept between sessions: $DENSETUNE_TEST_CACHE or a per-user temp dir."""
    root = Path(
        os.environ.get("DENSETUNE_TEST_CACHE")
        or Path(tempfile.gettempdir()) / f"densetune-test-cache-{os.getuid()}"
    )
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf) -> str:
    """SmolLM2-135M-Instruct as a plain transformers folder (safetensors + tokenizer).

    Dequantising the GGUF takes ~40 s on 2 cores (gguf's Python reader parses the 49k-token vocabulary
    twice), so the converted copy is cached across sessions, keyed by the GGUF's size and mtime. The
    conversion goes through densetune's own GGUF loader, which this fixture therefore exercises.
    """
    from transformers import AutoTokenizer

    from densetune.models.biencoder import _load_backbone

    gguf = Path(smollm2_gguf)
    stat = gguf.stat()
    target = _cache_root() / f"smollm2-{stat.st_size}-{int(stat.st_mtime)}"
    if not (target / "model.safetensors").is_file():
        staging = Path(tempfile.mkdtemp(prefix="smollm2-", dir=target.parent))
        model = _load_backbone(str(gguf.parent), gguf_file=gguf.name, attn_implementation="sdpa", dtype=None)
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(staging)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)  # atomic: a killed run leaves no half-written cache
    return str(target)


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_dir, tmp_path_factory) -> str:
    """Random 2-layer Llama (hidden 32) with SmolLM2's real tokenizer: decoder features in milliseconds."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    out = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_bert_dir(minilm_path, tmp_path_factory) -> str:
    """Random 2-layer BERT (hidden 32, dropout 0.1) with MiniLM's real WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
