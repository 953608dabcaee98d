"""Tests for densetune.data.samplers: exact len, DDP sharding, determinism, resume, accounting, warnings."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from densetune.data import samplers
from densetune.data.samplers import (
    ORGANIZE_METHODS,
    LengthBucketBatchSampler,
    NoDuplicatesBatchSampler,
    RandomBatchSampler,
    SameTaskBatchSampler,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------------------
# helpers


def all_ranks(make: Callable[..., object], world_size: int) -> list[list[list[int]]]:
    """One full iteration per rank; checks len() against what each rank yields."""
    per_rank = []
    for rank in range(world_size):
        sampler = make(rank=rank, world_size=world_size)
        batches = list(sampler)
        assert len(sampler) == len(batches)
        per_rank.append(batches)
    return per_rank


def global_batches(per_rank: list[list[list[int]]]) -> list[list[int]]:
    """Concatenate the ranks' slices step by step, checking the DDP contract on the way."""
    assert len({len(batches) for batches in per_rank}) == 1, "ranks yield different numbers of batches"
    out = []
    for step in zip(*per_rank):
        sizes = {len(part) for part in step}
        assert len(sizes) == 1 and 0 not in sizes, f"unequal or empty rank slices: {[len(p) for p in step]}"
        batch = [i for part in step for i in part]
        assert len(set(batch)) == len(batch), "an example appears twice in one global batch"
        out.append(batch)
    return out


def check_accounting(sampler, batches: list[list[int]], num_examples: int) -> samplers._Report:
    """Every example missing from the epoch is reported as dropped; every repeat is a reported pad."""
    _, report = sampler._plan(sampler.epoch)
    counts = Counter(i for batch in batches for i in batch)
    assert all(0 <= i < num_examples for i in counts)
    lost = (
        report.dropped_batch_examples
        + report.trimmed_examples
        + sum(report.dropped_tasks.values())
        + sum(report.tiny_tasks.values())
    )
    assert num_examples - len(counts) == lost
    assert sum(c - 1 for c in counts.values()) == report.padded_examples
    return report


def assert_no_shared_keys(batch: list[int], keys: list[list[int]]) -> None:
    seen: set = set()
    for i in batch:
        mine = set(keys[i])
        assert not mine & seen, f"key shared inside a global batch: {mine & seen}"
        seen |= mine


# ---------------------------------------------------------------------------------------------------------
# RandomBatchSampler / LengthBucketBatchSampler


@FAST
@given(
    n=st.integers(0, 300),
    batch_size=st.integers(1, 16),
    world_size=st.integers(1, 4),
    drop_last=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_random_sampler_len_sharding_and_coverage(n, batch_size, world_size, drop_last, seed):
    def make(**kw):
        return RandomBatchSampler(n, batch_size, seed=seed, drop_last=drop_last, **kw)

    batches = global_batches(all_ranks(make, world_size))
    size = batch_size * world_size
    assert all(len(b) == size for b in batches[: n // size])
    report = check_accounting(make(rank=0, world_size=world_size), batches, n)
    flat = [i for b in batches for i in b]
    if drop_last:
        assert len(flat) == len(set(flat)) == n - n % size
    elif world_size == 1:
        assert sorted(flat) == list(range(n))
    elif n >= size:
        assert report.trimmed_examples == 0, "a dataset with a full batch always pads instead of trimming"


@FAST
@given(
    lengths=st.lists(st.integers(0, 50), max_size=250),
    batch_size=st.integers(1, 12),
    world_size=st.integers(1, 3),
    multiplier=st.integers(1, 4),
    drop_last=st.booleans(),
)
def test_length_bucket_len_sharding_and_coverage(lengths, batch_size, world_size, multiplier, drop_last):
    def make(**kw):
        return LengthBucketBatchSampler(
            lengths, batch_size, bucket_size_multiplier=multiplier, drop_last=drop_last, **kw
        )

    batches = global_batches(all_ranks(make, world_size))
    check_accounting(make(rank=0, world_size=world_size), batches, len(lengths))
    if world_size == 1 and not drop_last:
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))


def test_length_buckets_cut_padding():
    lengths = np.random.default_rng(0).integers(5, 500, size=4000)

    def padded_tokens(sampler) -> int:
        return sum(int(lengths[b].max()) * len(b) for b in sampler)

    bucketed = padded_tokens(LengthBucketBatchSampler(lengths, 32, bucket_size_multiplier=50))
    shuffled = padded_tokens(RandomBatchSampler(len(lengths), 32))
    assert bucketed < 0.6 * shuffled
    for batch in LengthBucketBatchSampler(lengths, 32, bucket_size_multiplier=50):
        assert np.ptp(lengths[batch]) < 100  # each batch holds similar lengths


# ---------------------------------------------------------------------------------------------------------
# NoDuplicatesBatchSampler


@FAST
@given(
    n=st.integers(0, 150),
    vocab=st.integers(3, 60),
    max_keys=st.integers(0, 4),
    batch_size=st.integers(1, 12),
    world_size=st.integers(1, 3),
    drop_last=st.booleans(),
    seed=st.integers(0, 10**6),
)
def test_no_duplicates_invariants(n, vocab, max_keys, batch_size, world_size, drop_last, seed):
    rng = np.random.default_rng(seed)
    keys = [rng.integers(0, vocab, size=rng.integers(0, max_keys + 1)).tolist() for _ in range(n)]

    def make(**kw):
        return NoDuplicatesBatchSampler(keys, batch_size, drop_last=drop_last, **kw)

    batches = global_batches(all_ranks(make, world_size))
    for batch in batches:
        assert_no_shared_keys(batch, keys)
    report = check_accounting(make(rank=0, world_size=world_size), batches, n)
    if not drop_last and world_size == 1:
        assert sorted(i for b in batches for i in b) == list(range(n))
    if not drop_last:
        assert report.dropped_batch_examples == 0
    # Only the end of the epoch holds smaller batches.
    sizes = [len(b) for b in batches]
    full = batch_size * world_size
    first_short = next((k for k, s in enumerate(sizes) if s < full), len(sizes))
    assert all(s < full + world_size for s in sizes[first_short:])
    assert all(s == full for s in sizes[:first_short])


def test_no_duplicates_key_forms_agree():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 500, size=(600, 4))
    as_strings = [tuple(f"doc-{k}" for k in row) for row in ids.tolist()]
    from_array = list(NoDuplicatesBatchSampler(ids, 16, seed=3))
    from_strings = list(NoDuplicatesBatchSampler(as_strings, 16, seed=3))
    assert from_array == from_strings
    column = pa.chunked_array([pa.array(as_strings[:250]), pa.array(as_strings[250:])])  # list<string>
    assert list(NoDuplicatesBatchSampler(column, 16, seed=3)) == from_strings
    with pytest.raises(TypeError, match="one list of keys per example"):
        NoDuplicatesBatchSampler(pa.array(["a", "b"]), 2)
    single = list(NoDuplicatesBatchSampler(["a", "b", "a", "c"], 2, seed=0))  # a bare str is one key
    assert all(not ({0, 2} <= set(b)) for b in single)


def test_no_duplicates_defers_instead_of_dropping():
    # 40 examples share "hot": no two may meet, so the epoch needs 40 batches and ends with small ones.
    keys = [["hot", f"q{i}"] for i in range(40)] + [[f"x{i}"] for i in range(200)]
    sampler = NoDuplicatesBatchSampler(keys, 16)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(240))
    assert all(sum(i < 40 for i in b) <= 1 for b in batches)


def test_no_duplicates_hot_key_warning(caplog):
    keys = [["hot", f"q{i}"] for i in range(40)] + [[f"x{i}"] for i in range(200)]
    with caplog.at_level(logging.WARNING, logger="densetune.data.samplers"):
        NoDuplicatesBatchSampler(keys, 16)
    assert "key 'hot' appears in 40 examples" in caplog.text
    assert "fill only 15 global batches of 16" in caplog.text


def test_no_duplicates_packs_a_large_epoch():
    # 200k examples x 8 keys with query rows repeated 16 times: vectorised packing, batch 4096.
    rng = np.random.default_rng(0)
    query = np.repeat(np.arange(12_500), 16)
    ids = np.column_stack([query, query + 10**7, rng.integers(0, 2 * 10**6, size=(len(query), 6))])
    sampler = NoDuplicatesBatchSampler(ids, 4096)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sum(map(len, batches)) == len(query)
    for batch in batches[:3] + batches[-3:]:
        flat = ids[batch].ravel()
        assert len(np.unique(flat)) == len(flat)


# ---------------------------------------------------------------------------------------------------------
# SameTaskBatchSampler


# What both SameTaskBatchSampler property tests draw.
SAME_TASK_SETTINGS = {
    "sizes": st.lists(st.integers(1, 50), min_size=1, max_size=5),
    "batch_size": st.integers(1, 6),
    "world_size": st.integers(1, 3),
    "organize": st.sampled_from(ORGANIZE_METHODS),
    "drop_last": st.booleans(),
    "small_task": st.sampled_from(["keep", "drop"]),
    "seed": st.integers(0, 100),
}


def same_task_epoch(
    sizes: list[int], batch_size: int, world_size: int, by_task: dict[str, int] | None = None, **options
) -> tuple[list[str], Callable[..., SameTaskBatchSampler], list[list[int]]]:
    """Tasks ``t0, t1, ...`` of ``sizes`` examples, a factory of samplers over them, and one epoch's batches.

    The epoch's global batches are checked: the DDP contract, one task each, and at most the task's global
    batch plus ``world_size - 1`` pads.
    """
    tasks = [f"t{t}" for t, size in enumerate(sizes) for _ in range(size)]

    def make(**kw):
        return SameTaskBatchSampler(tasks, batch_size, batch_size_by_task=by_task, **options, **kw)

    batches = global_batches(all_ranks(make, world_size))
    for batch in batches:
        names = {tasks[i] for i in batch}
        assert len(names) == 1, "a global batch mixes tasks"
        assert len(batch) <= (by_task or {}).get(names.pop(), batch_size) * world_size + world_size - 1
    return tasks, make, batches


@FAST
@given(**SAME_TASK_SETTINGS, no_duplicates=st.booleans())
def test_same_task_invariants(
    sizes, batch_size, world_size, organize, drop_last, small_task, no_duplicates, seed
):
    rng = np.random.default_rng(seed)
    keys = (
        [[int(k) for k in rng.integers(0, 25, size=2)] for _ in range(sum(sizes))] if no_duplicates else None
    )
    if keys is not None and organize == "random":
        return
    tasks, make, batches = same_task_epoch(
        sizes, batch_size, world_size, seed=seed, organize=organize, drop_last=drop_last,
        small_task=small_task, keys=keys,
    )  # fmt: skip
    if keys is not None:
        for batch in batches:
            assert_no_shared_keys(batch, keys)
    if organize == "random":
        return
    report = check_accounting(make(rank=0, world_size=world_size), batches, len(tasks))
    if not drop_last and small_task == "keep" and world_size == 1:
        assert sorted(i for b in batches for i in b) == list(range(len(tasks)))
    assert not report.dropped_tasks or small_task == "drop"


def test_same_task_epoch_modes_share_membership_and_differ_in_order():
    tasks = ["a"] * 40 + ["b"] * 24 + ["c"] * 16

    def plan(organize: str, epoch: int) -> list[tuple[int, ...]]:
        sampler = SameTaskBatchSampler(tasks, 4, organize=organize, seed=7)
        sampler.set_epoch(epoch)
        return [tuple(b) for b in sampler]

    epoch, epoch_random = plan("epoch", 0), plan("epoch-random", 0)
    assert sorted(epoch) == sorted(epoch_random) and epoch != epoch_random
    assert sorted(plan("epoch", 0)) != sorted(plan("epoch", 1))  # membership reshuffled per epoch
    static0, static1 = plan("epoch-static", 0), plan("epoch-static", 1)
    assert sorted(static0) == sorted(static1) and static0 != static1  # same batches, new order
    # epoch-random takes each task's batches as consecutive slices of one shuffle, in that order
    by_task: dict[str, list[tuple[int, ...]]] = {}
    for batch in epoch_random:
        by_task.setdefault(tasks[batch[0]], []).append(batch)
    assert len(by_task["a"]) == 10 and len(by_task["c"]) == 4


def test_same_task_random_picks_tasks_by_size():
    tasks = ["big"] * 900 + ["small"] * 100
    sampler = SameTaskBatchSampler(tasks, 10, organize="random", seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 100  # as many steps as organize="epoch"
    share = sum(tasks[b[0]] == "big" for b in batches) / len(batches)
    assert 0.8 < share < 0.98
    assert all(len(set(b)) == 10 for b in batches)


def test_same_task_batch_count_matches_the_seed():
    # The seed: per task floor(n / global batch) batches, the rest dropped.
    tasks = ["a"] * 37 + ["b"] * 20 + ["c"] * 3
    for organize in ("epoch", "epoch-random", "epoch-static"):
        sampler = SameTaskBatchSampler(tasks, 4, organize=organize, small_task="drop", world_size=2, rank=1)
        assert len(sampler) == 37 // 8 + 20 // 8 == len(list(sampler))


@FAST
@given(**SAME_TASK_SETTINGS, task_batch=st.lists(st.integers(1, 8), min_size=5, max_size=5))
def test_same_task_batch_size_by_task_invariants(
    sizes, task_batch, batch_size, world_size, organize, drop_last, small_task, seed
):
    by_task = {f"t{t}": task_batch[t] for t in range(0, len(sizes), 2)}  # every other task has its own size
    tasks, make, batches = same_task_epoch(
        sizes, batch_size, world_size, by_task, seed=seed, organize=organize, drop_last=drop_last,
        small_task=small_task,
    )  # fmt: skip
    if organize == "random":
        return
    check_accounting(make(rank=0, world_size=world_size), batches, len(tasks))
    if (
        drop_last and small_task == "drop"
    ):  # the seed's rule, per task: floor(n / its global batch) full batches
        expected = sum(n // (by_task.get(f"t{t}", batch_size) * world_size) for t, n in enumerate(sizes))
        assert len(batches) == expected
        assert all(len(b) == by_task.get(tasks[b[0]], batch_size) * world_size for b in batches)


def test_same_task_batch_size_by_task_names_tasks_and_resumes_only_with_the_same_sizes():
    tasks = ["msmarco"] * 40 + ["sts"] * 40
    sampler = SameTaskBatchSampler(tasks, 4, batch_size_by_task={"sts": 8}, seed=0)
    assert sorted({(tasks[b[0]], len(b)) for b in sampler}) == [("msmarco", 4), ("sts", 8)]
    assert len(sampler) == 40 // 4 + 40 // 8
    with pytest.raises(ValueError, match="'stss' is not a task of the data; its tasks are 'msmarco', 'sts'"):
        SameTaskBatchSampler(tasks, 4, batch_size_by_task={"stss": 8})
    with pytest.raises(ValueError, match=r"batch_size_by_task\['sts'\] must be an integer >= 1"):
        SameTaskBatchSampler(tasks, 4, batch_size_by_task={"sts": 0})
    with pytest.raises(ValueError, match="batch_size_by_task: saved"):
        SameTaskBatchSampler(tasks, 4, batch_size_by_task={"sts": 16}).load_state_dict(sampler.state_dict())
    # A state saved without per-task sizes still loads into a sampler without them.
    plain = SameTaskBatchSampler(tasks, 4).state_dict()
    assert "batch_size_by_task" not in plain["config"]
    SameTaskBatchSampler(tasks, 4).load_state_dict(plain)


def test_same_task_from_index_ranges():
    sampler = SameTaskBatchSampler.from_index_ranges({"qa": (0, 12), "chat": (12, 20)}, 4, drop_last=False)
    assert sampler.task_names == ["chat", "qa"]
    for batch in sampler:
        assert all(i < 12 for i in batch) or all(i >= 12 for i in batch)
    with pytest.raises(ValueError, match="cover 0..N-1"):
        SameTaskBatchSampler.from_index_ranges({"qa": (0, 12), "chat": (13, 20)}, 4)


# ---------------------------------------------------------------------------------------------------------
# shared contract: determinism, identical plans on every rank, resume


def make_samplers(world_size: int = 1, rank: int = 0) -> dict[str, object]:
    rng = np.random.default_rng(5)
    keys = [[int(k) for k in row] for row in rng.integers(0, 300, size=(203, 3))]
    tasks = [f"t{i % 3}" for i in range(203)]
    common = {"rank": rank, "world_size": world_size, "seed": 11}
    return {
        "random": RandomBatchSampler(203, 8, **common),
        "length": LengthBucketBatchSampler(
            rng.integers(1, 100, size=203), 8, bucket_size_multiplier=3, **common
        ),
        "no-dup": NoDuplicatesBatchSampler(keys, 8, **common),
        "same-task": SameTaskBatchSampler(tasks, 8, drop_last=False, **common),
        "same-task-random": SameTaskBatchSampler(tasks, 8, organize="random", **common),
        "same-task-no-dup": SameTaskBatchSampler(tasks, 8, organize="epoch-random", keys=keys, **common),
        "same-task-sizes": SameTaskBatchSampler(
            tasks, 8, drop_last=False, batch_size_by_task={"t1": 3, "t2": 12}, **common
        ),
    }


KINDS = list(make_samplers())


def full_epoch(sampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("kind", KINDS)
def test_every_rank_plans_the_same_global_batches(kind):
    plans = [make_samplers(4, rank)[kind]._epochs.plan() for rank in range(4)]
    for plan in plans[1:]:
        assert np.array_equal(plan.flat, plans[0].flat) and np.array_equal(plan.bounds, plans[0].bounds)
    per_rank = [list(make_samplers(4, rank)[kind]) for rank in range(4)]
    merged = global_batches(per_rank)
    assert merged == [plans[0].global_batch(i).tolist() for i in range(len(plans[0]))]


@pytest.mark.parametrize("kind", KINDS)
def test_epochs_differ_and_an_epoch_reproduces(kind):
    sampler = make_samplers()[kind]
    first = list(sampler)
    assert list(sampler) == first == list(make_samplers()[kind])
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stop", [0, 1, 7])
def test_state_dict_resumes_mid_epoch(kind, stop):
    sampler = make_samplers(2, 1)[kind]
    sampler.set_epoch(3)
    iterator = iter(sampler)
    for _ in range(stop):
        next(iterator)
    state = json.loads(json.dumps(sampler.state_dict()))  # plain JSON types
    rest = list(iterator)
    assert state["epoch"] == 3 and state["batches_yielded"] == stop

    resumed = make_samplers(2, 1)[kind]
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # a loop calling set_epoch for the resumed epoch keeps the position
    assert list(resumed) == rest
    assert list(resumed) == full_epoch(make_samplers(2, 1)[kind], 3)


@pytest.mark.parametrize("kind", ["random", "no-dup", "same-task", "same-task-no-dup", "same-task-sizes"])
def test_stateful_dataloader_resumes_mid_epoch(kind):
    from torchdata.stateful_dataloader import StatefulDataLoader

    dataset = list(range(203))

    def loader(sampler) -> StatefulDataLoader:
        return StatefulDataLoader(dataset, batch_sampler=sampler, num_workers=0, collate_fn=as_list)

    sampler = make_samplers(2, 0)[kind]
    sampler.set_epoch(2)
    first = loader(sampler)
    iterator = iter(first)
    seen = [next(iterator) for _ in range(5)]
    state = first.state_dict()
    rest = list(iterator)
    assert seen + rest == full_epoch(make_samplers(2, 0)[kind], 2)

    again = make_samplers(2, 0)[kind]
    again.set_epoch(2)
    second = loader(again)
    second.load_state_dict(state)
    assert list(second) == rest
    assert list(second) == seen + rest  # the next pass is the whole epoch again (until set_epoch)


def test_stateful_dataloader_with_workers_resumes():
    from torchdata.stateful_dataloader import StatefulDataLoader

    dataset = list(range(203))
    sampler = make_samplers()["no-dup"]
    first = StatefulDataLoader(dataset, batch_sampler=sampler, num_workers=2, collate_fn=as_list)
    iterator = iter(first)
    for _ in range(6):
        next(iterator)
    state = first.state_dict()
    rest = list(iterator)
    second = StatefulDataLoader(
        dataset, batch_sampler=make_samplers()["no-dup"], num_workers=2, collate_fn=as_list
    )
    second.load_state_dict(state)
    assert list(second) == rest


def as_list(batch: list[int]) -> list[int]:
    return batch


def test_load_state_dict_refuses_other_settings_and_data():
    state = RandomBatchSampler(100, 8).state_dict()
    with pytest.raises(ValueError, match="batch_size: saved 8, now 16"):
        RandomBatchSampler(100, 16).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size"):
        RandomBatchSampler(100, 8, world_size=2, rank=0).load_state_dict(state)
    RandomBatchSampler(100, 8, world_size=1, rank=0).load_state_dict(state)  # any rank's state fits
    with pytest.raises(ValueError, match="cannot load the state of a RandomBatchSampler"):
        NoDuplicatesBatchSampler([[i] for i in range(100)], 8).load_state_dict(state)
    lengths_state = LengthBucketBatchSampler([1, 2, 3] * 10, 4).state_dict()
    with pytest.raises(ValueError, match="data_digest"):
        LengthBucketBatchSampler([3, 2, 1] * 10, 4).load_state_dict(lengths_state)
    with pytest.raises(ValueError, match="has only 13"):
        RandomBatchSampler(100, 8).load_state_dict({**state, "batches_yielded": 14})
    with pytest.raises(ValueError, match="missing"):
        RandomBatchSampler(100, 8).load_state_dict({"epoch": 0})


def test_torch_dataloader_and_distributed_defaults(monkeypatch):
    batches = list(DataLoader(list(range(10)), batch_sampler=RandomBatchSampler(10, 4, seed=0)))
    assert [len(b) for b in batches] == [4, 4, 2] and all(isinstance(b, torch.Tensor) for b in batches)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    sampler = RandomBatchSampler(30, 2)
    assert (sampler.rank, sampler.world_size, sampler.global_batch_size) == (1, 3, 6)


# ---------------------------------------------------------------------------------------------------------
# warnings with counts


def test_warns_with_counts_for_dropped_incomplete_batches(caplog):
    with caplog.at_level(logging.INFO, logger="densetune.data.samplers"):
        sampler = RandomBatchSampler(10, 4, drop_last=True)
        len(sampler), list(sampler), list(sampler)  # planned once per epoch: one warning
    assert caplog.text.count("dropped 1 incomplete global batch(es) holding 2 of 10 examples") == 1
    assert "drop_last=False" in caplog.text


def test_warns_for_small_tasks_dropped_or_trimmed(caplog):
    tasks = ["big"] * 20 + ["small"] * 3 + ["tiny"] * 1
    with caplog.at_level(logging.INFO, logger="densetune.data.samplers"):
        list(SameTaskBatchSampler(tasks, 4, small_task="drop"))
    assert "dropped 2 task(s) smaller than one global batch of 4, 4 examples in all" in caplog.text
    assert "'small' (3)" in caplog.text and "small_task='keep'" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="densetune.data.samplers"):
        list(SameTaskBatchSampler(tasks, 4, small_task="drop", batch_size_by_task={"big": 32}))
    assert "smaller than one global batch of 4 (batch_size_by_task: 'big' (32)), 24 examples" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="densetune.data.samplers"):
        sampler = SameTaskBatchSampler(tasks, 2, small_task="keep", drop_last=False, world_size=2, rank=0)
        batches = list(sampler)
    assert (
        "dropped 1 task(s) with fewer examples than the 2 ranks, 1 examples in all: 'tiny' (1)" in caplog.text
    )
    assert "dropped 1 example(s) from 1 smaller global batch(es)" in caplog.text  # 'small': 3 -> 2
    assert sum(len(b) for b in batches) == (20 + 2) // 2


def test_padding_is_logged_and_only_rank_zero_logs(caplog):
    with caplog.at_level(logging.INFO, logger="densetune.data.samplers"):
        list(RandomBatchSampler(11, 4, world_size=2, rank=1))
    assert caplog.text == ""
    with caplog.at_level(logging.INFO, logger="densetune.data.samplers"):
        batches = list(RandomBatchSampler(11, 4, world_size=2, rank=0))
    assert "padded 1 smaller global batch(es) with 1 example(s)" in caplog.text
    assert [len(b) for b in batches] == [4, 2]


def test_no_duplicates_drop_last_warns_with_counts(caplog):
    keys = [["hot"]] * 5 + [[f"x{i}"] for i in range(11)]
    with caplog.at_level(logging.WARNING, logger="densetune.data.samplers"):
        sampler = NoDuplicatesBatchSampler(keys, 4, drop_last=True)
        batches = list(sampler)
    kept = sum(map(len, batches))
    assert all(len(b) == 4 for b in batches)
    assert f"holding {16 - kept} of 16 examples (drop_last=True" in caplog.text


# ---------------------------------------------------------------------------------------------------------
# argument validation


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: SameTaskBatchSampler(["a"], 1, organize="shuffle"), ValueError, "'random', 'epoch'"),
        (lambda: SameTaskBatchSampler(["a"], 1, small_task="pad"), ValueError, "'keep', 'drop'"),
        (lambda: SameTaskBatchSampler(["a"], 1, organize="random", keys=[[1]]), ValueError, "'epoch'"),
        (lambda: SameTaskBatchSampler(["a", "b"], 1, keys=[[1]]), ValueError, "keys has 1 entries"),
        (lambda: SameTaskBatchSampler([["a"]], 1), TypeError, "hashable"),
        (lambda: RandomBatchSampler(10, 0), ValueError, "batch_size must be an integer >= 1"),
        (lambda: RandomBatchSampler(10, 2, seed=-1), ValueError, "seed"),
        (
            lambda: RandomBatchSampler(10, 2, rank=2, world_size=2),
            ValueError,
            r"rank must be in \[0, world_size=2\)",
        ),
        (lambda: LengthBucketBatchSampler([1, -1], 2), ValueError, r"lengths\[1\] is negative"),
        (lambda: LengthBucketBatchSampler([1, 2], 2, bucket_size_multiplier=0), ValueError, "bucket_size"),
        (lambda: NoDuplicatesBatchSampler([[["unhashable"]]], 2), TypeError, "hashable"),
        (lambda: NoDuplicatesBatchSampler([{"a", "b"}], 2), TypeError, "list or tuple"),
    ],
)
def test_constructors_validate_arguments(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_set_epoch_validates():
    with pytest.raises(ValueError, match="epoch"):
        RandomBatchSampler(10, 2).set_epoch(-1)
