"""densetune.hostmem: inside reuse_freed_memory a model's repeated steps stop page-faulting; outside they do not."""

from __future__ import annotations

import resource

import pytest
import torch

from densetune import hostmem
from densetune.hostmem import reuse_freed_memory

pytestmark = pytest.mark.skipif(not hostmem.available(), reason="needs Linux glibc (mallopt)")


@pytest.fixture(scope="module")
def step():
    """One forward + backward of a small BERT whose attention tensors (32 x 4 x 256 x 256 floats, 32 MiB)
    are above glibc's largest mmap threshold, as a real training step's are; returns its page faults."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=100,
        attn_implementation="eager",
    )
    model = BertModel(config)
    ids = torch.randint(0, 100, (32, 256))

    def run() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(input_ids=ids).last_hidden_state.sum().backward()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    return run


def test_steps_reuse_pages_inside_and_not_outside(step):
    step()
    outside = [step() for _ in range(3)]
    with reuse_freed_memory() as active:
        assert active
        step()  # the heap grows to the step's peak once
        inside = [step() for _ in range(5)]
    after = [step() for _ in range(2)]
    # every page of a step is mapped again outside (tens of thousands of faults); inside a typical step maps
    # none (the heap may still grow now and then where a freed block is too small for the next request)
    assert min(outside) > 10_000
    assert _median(inside) < min(outside) / 10
    # leaving restores glibc's defaults: large blocks are unmapped on free again
    assert min(after) > 10_000


def test_nested_contexts_restore_on_the_outermost_exit(step):
    with reuse_freed_memory():
        with reuse_freed_memory():
            step()
        step()
        inner_left = [step() for _ in range(5)]
    assert _median(inner_left) < 1_000


def _median(values: list[int]) -> int:
    return sorted(values)[len(values) // 2]


def test_disabled_by_argument_or_environment(monkeypatch):
    with reuse_freed_memory(enabled=False) as active:
        assert not active
    monkeypatch.setenv(hostmem.ENV, "system")
    assert not hostmem.available()
    with reuse_freed_memory() as active:
        assert not active
