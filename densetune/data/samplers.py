"""Batch samplers: turn dataset indices into this rank's batches of indices, the same way on every rank.

Every sampler here plans the *global* batches of an epoch (``batch_size * world_size`` indices each) from
``(seed, epoch)`` and the data it was given, identically on every rank, and yields only this rank's
contiguous slice of ``batch_size`` indices. Use one as ``batch_sampler=`` of a ``torch.utils.data.DataLoader``
or a ``torchdata.stateful_dataloader.StatefulDataLoader``; pass ``rank``/``world_size`` here (or let them
default to ``torch.distributed``) and do not let another layer shard the batches again (for example
accelerate's batch-sampler sharding).

Shared contract of :class:`RandomBatchSampler`, :class:`SameTaskBatchSampler`,
:class:`NoDuplicatesBatchSampler` and :class:`LengthBucketBatchSampler`:

- Deterministic: the batches depend only on the seed, the epoch (:meth:`set_epoch`, default 0; the caller
  advances it, as with ``DistributedSampler``) and the data. Iterating twice in one epoch repeats it.
- DDP-safe: at every step each rank gets a slice of the same size, and every rank yields the same number of
  batches, so collective calls (all-gather of embeddings, gradient all-reduce) never hang.
- ``len(sampler)`` is exact: the number of batches one full iteration of the current epoch yields on this
  rank. (The epoch's plan is built once and cached, so for :class:`NoDuplicatesBatchSampler` the first
  ``len`` call does the packing work.)
- ``state_dict()`` / ``load_state_dict()`` resume mid-epoch: the next iteration yields exactly the batches an
  uninterrupted run would still have yielded (``len(sampler) - state["batches_yielded"]`` of them; ``len``
  stays the epoch's full count), then later iterations run whole epochs again. ``torchdata``'s
  ``StatefulDataLoader`` saves and loads this state by itself. The state is the same on every rank, so rank
  0's state resumes all ranks; it refuses (``ValueError``) a state built with other settings or other data.
  One iteration at a time: a new ``iter()`` restarts the epoch (or, once after loading, resumes it).
- Nothing is dropped silently. Two rules make a kept smaller batch safe:

  1. A global batch never holds the same example twice (it would be a false in-batch negative of itself).
  2. A kept smaller global batch (the end of an epoch or of a task, with ``drop_last=False``, or a task
     smaller than one global batch) must split into ``world_size`` equal slices. When its size is not a
     multiple of ``world_size`` it is *padded* with examples of the same pool's full batches (the epoch's,
     or the same task's), which are therefore seen twice that epoch (logged at INFO). Where the pool has
     no full batch (a task smaller than one global batch, a dataset smaller than one global batch) the
     ``size % world_size`` extra examples (fewer than ``world_size``) are *trimmed*: dropped for that
     epoch with a WARNING giving the counts.

  Incomplete batches dropped by ``drop_last=True`` and tasks dropped by ``small_task="drop"`` are logged at
  WARNING with counts and the setting that keeps them. Logs come from rank 0 only, once per epoch, when
  the epoch's batches are planned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from densetune.data.batchplan import (
    Plan,
    Report,
    ShardedBatchSampler,
    check_choice,
    check_int,
    data_digest,
    factorize,
    name_counts,
    seeded_rng,
)
from densetune.data.keypacking import KeyPacker, Keys, no_duplicate_batches, warn_hot_key

ORGANIZE_METHODS = ("random", "epoch", "epoch-random", "epoch-static")
SMALL_TASK_POLICIES = ("keep", "drop")

# Purposes mixed into the seed so that independent random decisions use independent streams.
_SHUFFLE, _ORDER, _STATIC = 0, 1, 2


# --------------------------------------------------------------------------------------------------------
# Samplers (the shared bookkeeping is in densetune.data.batchplan, no-duplicate packing in keypacking)


class RandomBatchSampler(ShardedBatchSampler):
    """Shuffled batches over ``range(num_examples)``, sharded over ranks.

    Each epoch is a permutation from ``(seed, epoch)`` cut into global batches of ``batch_size * world_size``;
    rank ``r`` yields slice ``r`` of each. The last, incomplete global batch is dropped with a warning
    (``drop_last=True``) or kept; kept under DDP, it is padded to a multiple of ``world_size`` with the
    epoch's first examples (distinct from its own), so every rank gets an equal slice.

    Args:
        num_examples: dataset size.
        batch_size: examples per rank per step (the global batch is ``batch_size * world_size``).
        seed: base seed (>= 0); the same on every rank.
        drop_last: drop the incomplete last global batch (with a warning) instead of keeping it.
        rank: this rank; default ``torch.distributed.get_rank()`` when initialised, else 0.
        world_size: number of ranks; default ``torch.distributed.get_world_size()`` when initialised, else 1.

    Raises:
        ValueError: a size below its minimum, or ``rank`` outside ``[0, world_size)``.

    Example:
        >>> sampler = RandomBatchSampler(10, 4, seed=0)
        >>> len(sampler), [len(b) for b in sampler]
        (3, [4, 4, 2])
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        *,
        seed: int = 42,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.num_examples = check_int("num_examples", num_examples, 0)
        super().__init__(batch_size, seed)
        self.drop_last = bool(drop_last)
        self._shard(rank, world_size)
        config = {
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "seed": self.seed,
            "drop_last": self.drop_last,
        }
        self._start_epochs(config)

    def _plan(self, epoch: int) -> tuple[Plan, Report]:
        n, size = self.num_examples, self.global_batch_size
        report = Report(n, size, self.world_size)
        perm = seeded_rng(self.seed, epoch, _SHUFFLE).permutation(n)
        cut = n - n % size
        tail = report.last_batch(perm[cut:], perm[:cut], self.drop_last)
        return Plan.uniform(perm[:cut].reshape(-1, size), tail), report


class LengthBucketBatchSampler(ShardedBatchSampler):
    """Shuffled batches of similar lengths (less padding), sharded over ranks.

    Each epoch: shuffle all indices; cut the permutation into mega-buckets of
    ``batch_size * world_size * bucket_size_multiplier``; sort each mega-bucket by length (stable); cut it
    into global batches; shuffle the order of the batches. Only the last global batch can be incomplete;
    with ``drop_last=True`` it is dropped with a warning, else kept and, under DDP, padded with its nearest
    neighbours in length (the examples just before it in sorted order).

    Args:
        lengths: a length per example (tokens or characters), >= 0.
        batch_size: examples per rank per step.
        seed: base seed (>= 0).
        bucket_size_multiplier: global batches per mega-bucket (>= 1); larger sorts more globally.
        drop_last: drop the incomplete last global batch (with a warning) instead of keeping it.
        rank: this rank (default from torch.distributed, else 0).
        world_size: number of ranks (default from torch.distributed, else 1).

    Raises:
        ValueError: a negative length, or a size below its minimum, or ``rank`` outside ``[0, world_size)``.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        seed: int = 42,
        bucket_size_multiplier: int = 100,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if len(self.lengths) and self.lengths.min() < 0:
            raise ValueError(f"lengths must be >= 0; lengths[{int(np.argmin(self.lengths))}] is negative")
        super().__init__(batch_size, seed)
        self.bucket_size_multiplier = check_int("bucket_size_multiplier", bucket_size_multiplier, 1)
        self.drop_last = bool(drop_last)
        self._shard(rank, world_size)
        config = {
            "num_examples": len(self.lengths),
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "seed": self.seed,
            "bucket_size_multiplier": self.bucket_size_multiplier,
            "drop_last": self.drop_last,
            "data_digest": data_digest(self.lengths),
        }
        self._start_epochs(config)

    def _plan(self, epoch: int) -> tuple[Plan, Report]:
        n, size = len(self.lengths), self.global_batch_size
        report = Report(n, size, self.world_size)
        rng = seeded_rng(self.seed, epoch, _SHUFFLE)
        perm = rng.permutation(n)
        bucket = np.arange(n) // (size * self.bucket_size_multiplier)
        ordered = perm[np.lexsort((self.lengths[perm], bucket))]
        cut = n - n % size
        full = ordered[:cut].reshape(-1, size)[rng.permutation(cut // size)]
        # Pad with the tail's neighbours in length: the examples just before it in sorted order.
        tail = report.last_batch(ordered[cut:], ordered[:cut][::-1], self.drop_last)
        # The smaller batch takes a random place among the shuffled full ones.
        return Plan.uniform(full, tail, int(rng.integers(len(full) + 1))), report


class NoDuplicatesBatchSampler(ShardedBatchSampler):
    """Shuffled batches in which no key (document id, text hash, query) appears in two examples.

    With in-batch negatives, an example whose positive or negative also belongs to another example of the
    global batch turns into a false negative; this sampler keeps such examples in different global batches
    (the guarantee covers the whole global batch, all ranks together, so gathered negatives are clean too).

    Each epoch: shuffle the examples from ``(seed, epoch)``; fill each global batch greedily, first with
    examples deferred by earlier batches (oldest first), then with the next ones in the shuffle; an example
    that shares a key with the batch is deferred. Keys are turned into integer codes once, and batches are
    filled by vectorised numpy steps, so 1M examples x 8 keys at batch 8192 take seconds.

    Leftovers: only at the end of the epoch, when the examples still deferred all share keys with each other,
    do batches come out smaller than ``batch_size * world_size`` (a key shared by ``m`` examples needs ``m``
    different batches). ``drop_last=False`` keeps them (logged at INFO; under DDP each is padded to a
    multiple of ``world_size`` with non-clashing examples from the epoch's full batches, or trimmed with a
    warning when none fit); ``drop_last=True`` drops them with a warning giving the counts. So with
    ``drop_last=False`` nothing is dropped, except under DDP when the epoch has no full global batch at all
    (then fewer than ``world_size`` examples per smaller batch are trimmed, with a warning). The exact batch
    count is known only after packing, so ``len()`` plans the epoch (cached; about a second per million
    examples).

    Args:
        keys: ``keys[i]`` are the keys of example ``i`` (e.g. ``[query_text, pos_doc_id, neg_doc_id, ...]``);
            any hashables compared by equality; a bare str/bytes/int counts as one key; a key repeated
            within one example is fine. Python str keys cost about a microsecond each to encode (1M x 8
            in ~5 s); a 2-D integer numpy array (one row per example, e.g. ``doc_id_to_int64`` ids) or an
            Arrow list column (e.g. from an Arrow example store) skips the Python objects.
        batch_size: examples per rank per step.
        seed: base seed (>= 0).
        drop_last: drop the smaller batches the epoch ends with (with a warning) instead of keeping them.
        rank: this rank (default from torch.distributed, else 0).
        world_size: number of ranks (default from torch.distributed, else 1).

    Raises:
        ValueError: a size below its minimum, or ``rank`` outside ``[0, world_size)``.
        TypeError: a key is not hashable.
    """

    def __init__(
        self,
        keys: Keys,
        batch_size: int,
        *,
        seed: int = 42,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__(batch_size, seed)
        self.drop_last = bool(drop_last)
        self._shard(rank, world_size)
        self._packer = KeyPacker.from_keys(keys)
        self.num_examples = self._packer.num_examples
        config = {
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "seed": self.seed,
            "drop_last": self.drop_last,
            "data_digest": self._packer.digest(),
        }
        self._start_epochs(config)
        warn_hot_key(type(self).__name__, self._packer, self.num_examples, self.global_batch_size, self.rank)

    def _plan(self, epoch: int) -> tuple[Plan, Report]:
        report = Report(self.num_examples, self.global_batch_size, self.world_size)
        order = seeded_rng(self.seed, epoch, _SHUFFLE).permutation(self.num_examples)
        batches = no_duplicate_batches(
            self._packer, order, self.global_batch_size, not self.drop_last, report
        )
        return Plan.from_batches(batches), report


class SameTaskBatchSampler(ShardedBatchSampler):
    """Batches in which every example of a global batch comes from one task (dataset), sharded over ranks.

    The densetune form of LLM-Embedder's ``SameDatasetTrainDataset`` and FlagEmbedding's
    ``same_dataset_within_batch``: all ranks plan the same global batches from the shared seed and each
    yields its slice, so a step's in-batch (and cross-device) negatives all come from one task.

    ``organize`` (as the seed, made deterministic per epoch and DDP-exact):

    - ``"epoch"``: shuffle each task, cut it into global batches, shuffle all batches together (from
      ``(seed, epoch)``). Every kept example once per epoch.
    - ``"epoch-random"``: the same per-task batches, taken in order (sequential slices of the shuffled
      task); each step picks a task with probability proportional to its examples not yet used this epoch.
    - ``"epoch-static"``: batch *membership* is planned once from ``seed`` alone and is the same every
      epoch; only the order of the batches is reshuffled each epoch from ``(seed, epoch)``. (The seed builds
      its batches once and reshuffles their order after each pass.) Trimmed or dropped examples are
      therefore the same ones every epoch.
    - ``"random"``: each step picks a task with probability proportional to its size and samples a global
      batch from it without replacement (independently per step, so an epoch repeats some examples and
      misses others). The epoch has as many steps as ``"epoch"`` would yield. Unlike the seed, where each
      rank sampled on its own (overlapping slices), all ranks share the sampled global batch.

    Small tasks and leftovers (the seed dropped both silently):

    - A task's incomplete last global batch: dropped with a warning (``drop_last=True``, the seed's
      default) or kept as a smaller batch, padded under DDP to a multiple of ``world_size`` with other
      examples of the same task.
    - A task smaller than one global batch: ``small_task="drop"`` drops it with a warning; ``"keep"`` trains
      on it as one smaller global batch. Under DDP that batch is cut to a multiple of ``world_size`` and the
      ``size % world_size`` extra examples (fewer than ``world_size``) are dropped for the epoch with a
      warning; a task with fewer examples than ranks is dropped with a warning. It is never filled by
      repeating examples of the task: a repeated example would be its own in-batch false negative.

    Per-task batch sizes (``batch_size_by_task``): a task listed there is cut into global batches of
    ``batch_size_by_task[task] * world_size`` instead of ``batch_size * world_size`` (BGE-EN-ICL trains its
    symmetric tasks with ``symmetric_batch_size``, retrieval with the training batch size). Every rule above
    applies per task with that task's size; each step's batch still comes from one task, so every rank's
    slice of a step has the same size. ``len``, resume and sharding are unchanged: the plan holds each
    batch's own size.

    Args:
        tasks: the task name of each example (any hashable; names sort by ``str``).
        batch_size: examples per rank per step.
        seed: base seed (>= 0).
        organize: one of :data:`ORGANIZE_METHODS`.
        drop_last: drop each task's incomplete last global batch (with a warning) instead of keeping it.
        small_task: one of :data:`SMALL_TASK_POLICIES`, for tasks smaller than one global batch.
        keys: optional per-example keys as in :class:`NoDuplicatesBatchSampler`: batches are then also free
            of duplicate keys (packed within each task). Needs an ``"epoch*"`` organize.
        batch_size_by_task: ``{task name: examples per rank per step}`` for tasks that do not use
            ``batch_size`` (names as ``str(task)``, e.g. the file stems of FlagEmbedding data). Per rank, like
            ``batch_size``: the seed's global ``symmetric_batch_size`` of 128 on 8 GPUs is 16 here.
        rank: this rank (default from torch.distributed, else 0).
        world_size: number of ranks (default from torch.distributed, else 1).

    Raises:
        ValueError: an unknown ``organize`` / ``small_task``, ``keys`` with ``organize="random"`` or of
            another length than ``tasks``, a ``batch_size_by_task`` name that is no task (naming the tasks), a
            size below its minimum, or ``rank`` outside ``[0, world_size)``.
        TypeError: a task name or key is not hashable.

    Example:
        >>> tasks = ["msmarco"] * 40 + ["sts"] * 40
        >>> sampler = SameTaskBatchSampler(tasks, 4, batch_size_by_task={"sts": 8}, seed=0)
        >>> sorted({(tasks[b[0]], len(b)) for b in sampler})
        [('msmarco', 4), ('sts', 8)]
    """

    def __init__(
        self,
        tasks: Sequence[str],
        batch_size: int,
        *,
        seed: int = 42,
        organize: str = "epoch",
        drop_last: bool = True,
        small_task: str = "keep",
        keys: Keys | None = None,
        batch_size_by_task: Mapping[str, int] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__(batch_size, seed)
        self.organize = check_choice("organize", organize, ORGANIZE_METHODS)
        self.drop_last = bool(drop_last)
        self.small_task = check_choice("small_task", small_task, SMALL_TASK_POLICIES)
        self._shard(rank, world_size)

        codes, names = factorize(tasks)
        # Task t is names[t]; sort the names so that the task order does not depend on the file order.
        by_name = sorted(range(len(names)), key=lambda t: str(names[t]))
        remap = np.empty(len(names), dtype=np.int64)
        remap[by_name] = np.arange(len(names))
        codes = remap[codes] if len(names) else codes
        self.task_names = [str(names[t]) for t in by_name]
        counts = np.bincount(codes, minlength=len(names))
        self._members = np.split(np.argsort(codes, kind="stable"), np.cumsum(counts)[:-1])
        self.num_examples = len(codes)
        self.batch_size_by_task = self._check_task_sizes(batch_size_by_task)
        # Global batch of each task (in task_names order): its per-rank size times the ranks.
        self._sizes = [
            self.batch_size_by_task.get(name, self.batch_size) * self.world_size for name in self.task_names
        ]

        self._packer: KeyPacker | None = None
        digest_parts = [codes]
        if keys is not None:
            if self.organize == "random":
                raise ValueError(
                    "keys (no-duplicate batches) need a planned epoch: use organize='epoch', 'epoch-random' "
                    "or 'epoch-static', not 'random'"
                )
            self._packer = KeyPacker.from_keys(keys)
            if self._packer.num_examples != self.num_examples:
                raise ValueError(
                    f"keys has {self._packer.num_examples} entries but tasks has {self.num_examples}; "
                    "give one entry per example to both"
                )
            digest_parts += [self._packer.ptr, self._packer.codes]
            warn_hot_key(
                type(self).__name__, self._packer, self.num_examples, self.global_batch_size, self.rank
            )
        self._static: tuple[list[list[np.ndarray]], Report] | None = None
        config = {
            "num_examples": self.num_examples,
            "tasks": list(self.task_names),
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "seed": self.seed,
            "organize": self.organize,
            "drop_last": self.drop_last,
            "small_task": self.small_task,
            "no_duplicates": keys is not None,
            "data_digest": data_digest(*digest_parts),
        }
        if self.batch_size_by_task:
            # Only when set, so states saved before this option existed still load.
            config["batch_size_by_task"] = dict(sorted(self.batch_size_by_task.items()))
        self._start_epochs(config)

    def _check_task_sizes(self, sizes: Mapping[str, int] | None) -> dict[str, int]:
        """``batch_size_by_task`` as ``{task name: size}``, every name a task and every size >= 1."""
        if sizes is None:
            return {}
        if not isinstance(sizes, Mapping):
            raise ValueError(f"batch_size_by_task must map task names to batch sizes, got {sizes!r}")
        out = {str(name): check_int(f"batch_size_by_task[{name!r}]", size, 1) for name, size in sizes.items()}
        unknown = sorted(set(out) - set(self.task_names))
        if unknown:
            raise ValueError(
                f"batch_size_by_task: {', '.join(map(repr, unknown))} is not a task of the data; its tasks are "
                f"{', '.join(map(repr, self.task_names[:20]))}{' ...' if len(self.task_names) > 20 else ''}"
            )
        return out

    @classmethod
    def from_index_ranges(
        cls, ranges: Mapping[str, tuple[int, int]], batch_size: int, **kwargs: Any
    ) -> SameTaskBatchSampler:
        """Build from LLM-Embedder's ``dataset_indices_range`` (``{task: (start, end)}``, end exclusive).

        Args:
            ranges: disjoint ranges covering ``0..N-1``, one per task.
            batch_size: examples per rank per step.
            **kwargs: the other arguments of the constructor.

        Raises:
            ValueError: the ranges overlap, leave gaps, or are empty.
        """
        spans = sorted((int(start), int(end), name) for name, (start, end) in ranges.items())
        tasks: list[str] = []
        for start, end, name in spans:
            if start != len(tasks) or end <= start:
                raise ValueError(
                    f"index ranges must be non-empty, disjoint and cover 0..N-1 without gaps; task {name!r} "
                    f"has ({start}, {end}) after index {len(tasks) - 1}"
                )
            tasks.extend([name] * (end - start))
        return cls(tasks, batch_size, **kwargs)

    # --- planning

    def _task_batches(self, rng: np.random.Generator, report: Report) -> list[list[np.ndarray]]:
        """Each task shuffled and cut into kept global batches (drop_last / small_task applied)."""
        world = self.world_size
        per_task: list[list[np.ndarray]] = []
        for name, members, size in zip(self.task_names, self._members, self._sizes):
            members = rng.permutation(members)
            n = len(members)
            small = n < size
            if small and self.small_task == "drop":
                report.dropped_tasks[name] = n
                per_task.append([])
                continue
            if n < world:
                report.tiny_tasks[name] = n
                per_task.append([])
                continue
            if self._packer is not None:
                keep_short = small or not self.drop_last
                per_task.append(no_duplicate_batches(self._packer, members, size, keep_short, report))
                continue
            cut = n - n % size
            batches = list(members[:cut].reshape(-1, size))
            # Pads come from the task's own full batches; a small task has none, so it is trimmed. A small
            # task is kept or dropped by small_task (above), not by drop_last.
            tail = report.last_batch(members[cut:], members[:cut], self.drop_last and not small)
            if len(tail):
                batches.append(tail)
            per_task.append(batches)
        return per_task

    def _random_plan(self, epoch: int, report: Report) -> Plan:
        world = self.world_size
        sizes = np.array([len(m) for m in self._members], dtype=np.int64)
        take = np.minimum(sizes, self._sizes) // world * world
        steps = 0
        for t, (name, n, k, size) in enumerate(
            zip(self.task_names, sizes.tolist(), take.tolist(), self._sizes)
        ):
            if n < size and self.small_task == "drop":
                report.dropped_tasks[name] = n
                take[t] = 0
            elif k == 0:
                report.tiny_tasks[name] = n
            elif n < size:
                steps += 1
            else:
                steps += n // size + (1 if n % size and not self.drop_last else 0)
        weights = np.where(take > 0, sizes, 0)
        rng = seeded_rng(self.seed, epoch, _SHUFFLE)
        batches = []
        if steps:
            chosen = rng.choice(len(sizes), size=steps, p=weights / weights.sum())
            for t in chosen.tolist():
                batches.append(self._members[t][rng.choice(int(sizes[t]), size=int(take[t]), replace=False)])
        return Plan.from_batches(batches)

    def _report(self) -> Report:
        report = Report(self.num_examples, self.global_batch_size, self.world_size)
        if self.batch_size_by_task:
            sizes = {name: size * self.world_size for name, size in self.batch_size_by_task.items()}
            report.task_sizes = f" (batch_size_by_task: {name_counts(sizes)})"
        return report

    def _plan(self, epoch: int) -> tuple[Plan, Report]:
        report = self._report()
        if self.organize == "random":
            return self._random_plan(epoch, report), report
        if self.organize == "epoch-static":
            if self._static is None:
                static_report = self._report()
                static_report.note = " (epoch-static: the same examples every epoch)"
                self._static = (
                    self._task_batches(seeded_rng(self.seed, _STATIC), static_report),
                    static_report,
                )
            per_task, report = self._static
        else:
            per_task = self._task_batches(seeded_rng(self.seed, epoch, _SHUFFLE), report)
        order_rng = seeded_rng(self.seed, epoch, _ORDER)
        if self.organize == "epoch-random":
            return Plan.from_batches(_interleave_by_remaining(per_task, order_rng)), report
        batches = [b for task in per_task for b in task]
        return Plan.from_batches([batches[i] for i in order_rng.permutation(len(batches))]), report


def _interleave_by_remaining(per_task: list[list[np.ndarray]], rng: np.random.Generator) -> list[np.ndarray]:
    """Take each task's batches in order; each step picks a task with odds proportional to its examples left."""
    remaining = np.array([sum(len(b) for b in batches) for batches in per_task], dtype=np.int64)
    taken = [0] * len(per_task)
    out = []
    for _ in range(sum(len(batches) for batches in per_task)):
        cumulative = np.cumsum(remaining)
        task = int(np.searchsorted(cumulative, rng.integers(cumulative[-1]), side="right"))
        batch = per_task[task][taken[task]]
        taken[task] += 1
        remaining[task] -= len(batch)
        out.append(batch)
    return out
