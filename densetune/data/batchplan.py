"""The bookkeeping every batch sampler shares: an epoch's plan, its report, per-rank slicing and resume state.

A sampler in :mod:`densetune.data.samplers` only plans an epoch's *global* batches (:class:`Plan`) and says
what planning dropped, trimmed or repeated (:class:`Report`, logged once per epoch on rank 0).
:class:`ShardedEpochs` does the rest the same way for all of them: the epoch, this rank's contiguous slice
of every global batch, the exact length, and the resume state; :class:`ShardedBatchSampler` is the
samplers' common base (settings, the sampler protocol). See the samplers' module docstring for the
contract.
"""

from __future__ import annotations

import itertools
import logging
import zlib
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

# The samplers' log, wherever the planning code lives: users filter on one logger name.
logger = logging.getLogger("densetune.data.samplers")

STATE_VERSION = 1

# --------------------------------------------------------------------------------------------------------
# Small helpers


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Rank and world size: the given values, else torch.distributed's when initialised, else 0 and 1."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world_size is None:
        world_size = torch.distributed.get_world_size() if distributed else 1
    if rank is None:
        rank = torch.distributed.get_rank() if distributed else 0
    world_size = check_int("world_size", world_size, 1)
    rank = check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}); got {rank}")
    return rank, world_size


def seeded_rng(seed: int, *words: int) -> np.random.Generator:
    """An independent generator for (seed, words...): the same on every rank and every run."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *words])))


def data_digest(*arrays: np.ndarray) -> int:
    """A cheap checksum of the data a sampler plans from, so a resume with other data is refused."""
    crc = 0
    for array in arrays:
        crc = zlib.crc32(np.ascontiguousarray(array).view(np.uint8), crc)
    return crc


def concat_indices(parts: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if len(parts) else np.empty(0, dtype=np.int64)


def factorize(values: Sequence[Hashable]) -> tuple[np.ndarray, list[Hashable]]:
    """Dense integer codes for hashable values (equal values, equal codes), in order of first appearance."""
    table: dict[Hashable, int] = {}
    try:
        codes = np.fromiter(
            (table.setdefault(v, len(table)) for v in values), dtype=np.int64, count=len(values)
        )
    except TypeError as err:
        raise TypeError(f"every value must be hashable (str, int, ...): {err}") from None
    return codes, list(table)


@dataclass(frozen=True)
class Plan:
    """The global batches of one epoch, stored flat: batch ``i`` is ``flat[bounds[i]:bounds[i + 1]]``."""

    flat: np.ndarray
    bounds: np.ndarray

    @classmethod
    def from_batches(cls, batches: Sequence[np.ndarray]) -> Plan:
        sizes = np.fromiter((len(b) for b in batches), dtype=np.int64, count=len(batches))
        return cls(
            concat_indices(batches).astype(np.int64, copy=False), np.concatenate([[0], np.cumsum(sizes)])
        )

    @classmethod
    def uniform(cls, full: np.ndarray, tail: np.ndarray | None = None, tail_at: int = -1) -> Plan:
        """Full batches (a 2-D array, one row each) plus an optional smaller batch inserted at ``tail_at``."""
        count, size = full.shape
        if tail is None or not len(tail):
            return cls(
                full.reshape(-1).astype(np.int64, copy=False), np.arange(count + 1, dtype=np.int64) * size
            )
        at = count if tail_at < 0 else tail_at
        flat = np.concatenate([full[:at].reshape(-1), tail, full[at:].reshape(-1)]).astype(
            np.int64, copy=False
        )
        sizes = np.full(count + 1, size, dtype=np.int64)
        sizes[at] = len(tail)
        return cls(flat, np.concatenate([[0], np.cumsum(sizes)]))

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def global_batch(self, i: int) -> np.ndarray:
        return self.flat[self.bounds[i] : self.bounds[i + 1]]


@dataclass
class Report:
    """What planning one epoch left out or repeated; turned into one log line per kind."""

    total: int
    global_batch: int
    world_size: int
    dropped_batches: int = 0
    dropped_batch_examples: int = 0
    dropped_tasks: dict[str, int] = field(default_factory=dict)
    tiny_tasks: dict[str, int] = field(default_factory=dict)
    trimmed_batches: int = 0
    trimmed_examples: int = 0
    padded_batches: int = 0
    padded_examples: int = 0
    short_batches: int = 0
    short_examples: int = 0
    note: str = ""
    # Global batches of the tasks that do not use global_batch (SameTaskBatchSampler's batch_size_by_task).
    task_sizes: str = ""

    def fit_to_ranks(self, batch: np.ndarray, donors: np.ndarray) -> np.ndarray:
        """Make a kept smaller global batch split evenly over the ranks (rule 2 of the module docstring).

        Args:
            batch: the smaller global batch (distinct examples).
            donors: examples of the same pool that are not in ``batch``, best first.

        Returns:
            ``batch`` padded with the first ``-len(batch) % world_size`` donors, or, with too few donors,
            ``batch`` cut to a multiple of ``world_size`` (possibly empty).
        """
        extra = (-len(batch)) % self.world_size
        if extra == 0:
            return batch
        if len(donors) >= extra:
            self.padded_batches += 1
            self.padded_examples += extra
            return np.concatenate([batch, donors[:extra]])
        keep = len(batch) - len(batch) % self.world_size
        self.trimmed_batches += 1
        self.trimmed_examples += len(batch) - keep
        return batch[:keep]

    def last_batch(self, tail: np.ndarray, donors: np.ndarray, drop: bool) -> np.ndarray:
        """The incomplete last global batch of a pool cut into equal batches: dropped or fitted to the ranks.

        Args:
            tail: the examples left over after the pool's full global batches (may be empty).
            donors: the pool's examples in full batches, best pads first (see :meth:`fit_to_ranks`).
            drop: drop a non-empty ``tail`` (counted as one dropped batch) instead of keeping it.

        Returns:
            The batch to keep: ``tail`` fitted to the ranks, or empty when ``tail`` is empty or dropped.
        """
        if not len(tail):
            return tail
        if drop:
            self.dropped_batches += 1
            self.dropped_batch_examples += len(tail)
            return tail[:0]
        return self.fit_to_ranks(tail, donors)

    def log(self, sampler: str, epoch: int) -> None:
        head = f"{sampler}, epoch {epoch}:"
        shape = (
            f"global batch = batch_size x {self.world_size} rank(s) = {self.global_batch}{self.task_sizes}"
        )
        if self.dropped_batches:
            logger.warning(
                "%s dropped %d incomplete global batch(es) holding %d of %d examples (drop_last=True; %s)%s. "
                "Pass drop_last=False to keep them as smaller batches.",
                head, self.dropped_batches, self.dropped_batch_examples, self.total, shape, self.note,
            )  # fmt: skip
        if self.dropped_tasks:
            logger.warning(
                "%s dropped %d task(s) smaller than one global batch of %d%s, %d examples in all "
                "(small_task='drop'): %s. Pass small_task='keep' to train on them as smaller batches.",
                head, len(self.dropped_tasks), self.global_batch, self.task_sizes, sum(self.dropped_tasks.values()),
                name_counts(self.dropped_tasks),
            )  # fmt: skip
        if self.tiny_tasks:
            logger.warning(
                "%s dropped %d task(s) with fewer examples than the %d ranks, %d examples in all: %s. "
                "Every rank needs at least one example of the task at the same step; merge such tasks or "
                "train on fewer ranks.",
                head, len(self.tiny_tasks), self.world_size, sum(self.tiny_tasks.values()),
                name_counts(self.tiny_tasks),
            )  # fmt: skip
        if self.trimmed_examples:
            logger.warning(
                "%s dropped %d example(s) from %d smaller global batch(es) so that each of the %d ranks gets an "
                "equal slice: no other example of the same pool could pad the batch without repeating one "
                "inside it%s.",
                head, self.trimmed_examples, self.trimmed_batches, self.world_size, self.note,
            )  # fmt: skip
        if self.short_batches:
            logger.info(
                "%s kept %d smaller global batch(es) of at most %d (%d examples) at the end of the epoch or "
                "task: the last examples share keys, and no key may appear twice in a global batch.",
                head, self.short_batches, self.global_batch, self.short_examples,
            )  # fmt: skip
        if self.padded_examples:
            logger.info(
                "%s padded %d smaller global batch(es) with %d example(s) repeated from elsewhere in the epoch "
                "so that each of the %d ranks gets an equal slice.",
                head, self.padded_batches, self.padded_examples, self.world_size,
            )  # fmt: skip


def name_counts(counts: Mapping[str, int], limit: int = 8) -> str:
    items = [f"{name!r} ({n})" for name, n in itertools.islice(counts.items(), limit)]
    if len(counts) > limit:
        items.append(f"... and {len(counts) - limit} more")
    return ", ".join(items)


# --------------------------------------------------------------------------------------------------------
# Epoch bookkeeping shared by every sampler (held, not inherited)


class ShardedEpochs:
    """Epoch, resume position, per-rank slicing and the state dict: the bookkeeping every sampler shares.

    Args:
        sampler: the owning sampler's class name (logs, state dict).
        build: ``build(epoch) -> (plan, report)``, the owner's planning function.
        rank, world_size: this rank and the number of ranks.
        config: every setting and data digest the plan depends on; a state dict is only loaded when its
            config is equal.
    """

    def __init__(
        self,
        sampler: str,
        build: Callable[[int], tuple[Plan, Report]],
        *,
        rank: int,
        world_size: int,
        config: dict[str, Any],
    ):
        self.sampler = sampler
        self._build = build
        self.rank = rank
        self.world_size = world_size
        self.config = config
        self.epoch = 0
        # Batches of the current epoch already yielded (or, after load_state_dict, to skip).
        self._position = 0
        self._resume = False
        self._cached: tuple[int, Plan] | None = None

    def plan(self) -> Plan:
        if self._cached is None or self._cached[0] != self.epoch:
            plan, report = self._build(self.epoch)
            if self.rank == 0:
                report.log(self.sampler, self.epoch)
            self._cached = (self.epoch, plan)
        return self._cached[1]

    def set_epoch(self, epoch: int) -> None:
        epoch = check_int("epoch", epoch, 0)
        if epoch != self.epoch:
            self.epoch = epoch
            self._position = 0
            self._resume = False

    def __len__(self) -> int:
        return len(self.plan())

    def iterate(self) -> Iterator[list[int]]:
        # Set up eagerly (not inside the generator): StatefulDataLoader calls iter() and may ask for the
        # state before the first batch is drawn.
        plan = self.plan()
        start = self._position if self._resume else 0
        self._resume = False
        self._position = start
        return self._batches(plan, start)

    def _batches(self, plan: Plan, start: int) -> Iterator[list[int]]:
        for i in range(start, len(plan)):
            batch = plan.global_batch(i)
            per_rank = len(batch) // self.world_size
            self._position = i + 1
            yield batch[self.rank * per_rank : (self.rank + 1) * per_rank].tolist()

    def state_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler,
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batches_yielded": self._position,
            "config": dict(self.config),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [k for k in ("sampler", "epoch", "batches_yielded", "config") if k not in state]
        if missing:
            raise ValueError(f"{self.sampler}: not a sampler state dict (missing {', '.join(missing)})")
        if state["sampler"] != self.sampler:
            raise ValueError(f"{self.sampler}: cannot load the state of a {state['sampler']}")
        saved = state["config"]
        diffs = [
            f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in self.config.items() if saved.get(k) != v
        ]
        if diffs:
            raise ValueError(
                f"{self.sampler}: cannot resume from a state planned with other settings or data "
                f"({'; '.join(diffs)}); the batches would differ. Build the sampler as it was when saved."
            )
        epoch = check_int("state['epoch']", state["epoch"], 0)
        position = check_int("state['batches_yielded']", state["batches_yielded"], 0)
        self.set_epoch(epoch)
        if position > len(self):
            raise ValueError(
                f"{self.sampler}: state says {position} batches were yielded in epoch {epoch}, but the epoch "
                f"has only {len(self)}"
            )
        self._position = position
        self._resume = True


# --------------------------------------------------------------------------------------------------------
# The base class of every sampler


class ShardedBatchSampler(Sampler[list[int]]):
    """The settings and the sampler protocol every sampler here shares; epochs are kept by a held ShardedEpochs.

    A subclass's ``__init__`` checks its leading arguments, calls ``super().__init__(batch_size, seed)``,
    checks the rest, then calls :meth:`_shard` (rank and world size) and ends with :meth:`_start_epochs`; it
    plans an epoch in :meth:`_plan`. The order of the checks decides which error a call with several bad
    arguments gets, so each subclass keeps its own.
    """

    def __init__(self, batch_size: int, seed: int):
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = check_int("seed", seed, 0)

    def _shard(self, rank: int | None, world_size: int | None) -> None:
        """Resolve this rank and the number of ranks; the global batch is ``batch_size`` per rank."""
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.global_batch_size = self.batch_size * self.world_size

    def _start_epochs(self, config: dict[str, Any]) -> None:
        """Hold the epoch bookkeeping; ``config`` is every setting and data digest the plan depends on."""
        self._epochs = ShardedEpochs(
            type(self).__name__, self._plan, rank=self.rank, world_size=self.world_size, config=config
        )

    def _plan(self, epoch: int) -> tuple[Plan, Report]:
        """The global batches of ``epoch`` and what planning them dropped or repeated."""
        raise NotImplementedError

    @property
    def epoch(self) -> int:
        return self._epochs.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration plans (keeps a loaded resume position for the same epoch)."""
        self._epochs.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        return self._epochs.iterate()

    def __len__(self) -> int:
        return len(self._epochs)

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches yielded so far this epoch, and the settings they depend on (same on all ranks)."""
        return self._epochs.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume: the next iteration yields the batches of the saved epoch not yet yielded.

        Raises:
            ValueError: the state is not this sampler's, or was built with other settings or data.
        """
        self._epochs.load_state_dict(state_dict)
