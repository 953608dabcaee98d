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

import itertools
import logging
import zlib
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

ORGANIZE_METHODS = ("random", "epoch", "epoch-random", "epoch-static")
SMALL_TASK_POLICIES = ("keep", "drop")

STATE_VERSION = 1

# What NoDuplicatesBatchSampler (and SameTaskBatchSampler(keys=...)) accept as per-example keys.
Keys = Union[Sequence[Sequence[Hashable]], np.ndarray, pa.Array, pa.ChunkedArray]

# Purposes mixed into the seed so that independent random decisions use independent streams.
_SHUFFLE, _ORDER, _STATIC = 0, 1, 2
_NO_ROW = np.iinfo(np.int64).max


# --------------------------------------------------------------------------------------------------------
# Small helpers


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Rank and world size: the given values, else torch.distributed's when initialised, else 0 and 1."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world_size is None:
        world_size = torch.distributed.get_world_size() if distributed else 1
    if rank is None:
        rank = torch.distributed.get_rank() if distributed else 0
    world_size = _check_int("world_size", world_size, 1)
    rank = _check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}); got {rank}")
    return rank, world_size


def _rng(seed: int, *words: int) -> np.random.Generator:
    """An independent generator for (seed, words...): the same on every rank and every run."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *words])))


def _digest(*arrays: np.ndarray) -> int:
    """A cheap checksum of the data a sampler plans from, so a resume with other data is refused."""
    crc = 0
    for array in arrays:
        crc = zlib.crc32(np.ascontiguousarray(array).view(np.uint8), crc)
    return crc


def _concat(parts: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if len(parts) else np.empty(0, dtype=np.int64)


def _factorize(values: Sequence[Hashable]) -> tuple[np.ndarray, list[Hashable]]:
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
class _Plan:
    """The global batches of one epoch, stored flat: batch ``i`` is ``flat[bounds[i]:bounds[i + 1]]``."""

    flat: np.ndarray
    bounds: np.ndarray

    @classmethod
    def from_batches(cls, batches: Sequence[np.ndarray]) -> _Plan:
        sizes = np.fromiter((len(b) for b in batches), dtype=np.int64, count=len(batches))
        return cls(_concat(batches).astype(np.int64, copy=False), np.concatenate([[0], np.cumsum(sizes)]))

    @classmethod
    def uniform(cls, full: np.ndarray, tail: np.ndarray | None = None, tail_at: int = -1) -> _Plan:
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
class _Report:
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
                _name_counts(self.dropped_tasks),
            )  # fmt: skip
        if self.tiny_tasks:
            logger.warning(
                "%s dropped %d task(s) with fewer examples than the %d ranks, %d examples in all: %s. "
                "Every rank needs at least one example of the task at the same step; merge such tasks or "
                "train on fewer ranks.",
                head, len(self.tiny_tasks), self.world_size, sum(self.tiny_tasks.values()),
                _name_counts(self.tiny_tasks),
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


def _name_counts(counts: Mapping[str, int], limit: int = 8) -> str:
    items = [f"{name!r} ({n})" for name, n in itertools.islice(counts.items(), limit)]
    if len(counts) > limit:
        items.append(f"... and {len(counts) - limit} more")
    return ", ".join(items)


# --------------------------------------------------------------------------------------------------------
# Epoch bookkeeping shared by every sampler (held, not inherited)


class _ShardedEpochs:
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
        build: Callable[[int], tuple[_Plan, _Report]],
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
        self._cached: tuple[int, _Plan] | None = None

    def plan(self) -> _Plan:
        if self._cached is None or self._cached[0] != self.epoch:
            plan, report = self._build(self.epoch)
            if self.rank == 0:
                report.log(self.sampler, self.epoch)
            self._cached = (self.epoch, plan)
        return self._cached[1]

    def set_epoch(self, epoch: int) -> None:
        epoch = _check_int("epoch", epoch, 0)
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

    def _batches(self, plan: _Plan, start: int) -> Iterator[list[int]]:
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
        epoch = _check_int("state['epoch']", state["epoch"], 0)
        position = _check_int("state['batches_yielded']", state["batches_yielded"], 0)
        self.set_epoch(epoch)
        if position > len(self):
            raise ValueError(
                f"{self.sampler}: state says {position} batches were yielded in epoch {epoch}, but the epoch "
                f"has only {len(self)}"
            )
        self._position = position
        self._resume = True


# --------------------------------------------------------------------------------------------------------
# No-duplicate packing (used by NoDuplicatesBatchSampler and SameTaskBatchSampler(keys=...))


def _dictionary_codes(flat: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(codes in order of first appearance, distinct values) of a null-free Arrow array."""
    encoded = pc.dictionary_encode(flat)
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary


class _KeyPacker:
    """Greedy packing of examples into batches in which no key is shared by two examples, vectorised.

    Keys are dense integer codes stored CSR-style: example ``i`` has ``codes[ptr[i]:ptr[i + 1]]``.
    ``owner[key]`` holds the stamp of the last batch that took the key, so a clash test is one gather.
    """

    def __init__(self, ptr: np.ndarray, codes: np.ndarray, num_keys: int):
        self.ptr = ptr
        self.codes = codes
        self.num_examples = len(ptr) - 1
        widths = np.diff(ptr)
        # Fast path: every example has the same number of keys (the usual query + n docs).
        self._width = int(widths[0]) if len(widths) and (widths == widths[0]).all() else None
        self._owner = np.full(num_keys, -1, dtype=np.int64)
        self._first = np.full(num_keys, _NO_ROW, dtype=np.int64)
        self._stamp = 0
        self.hot_key: Hashable = None
        self.hot_count = 0

    @classmethod
    def from_keys(cls, keys: Keys) -> _KeyPacker:
        """Codes for ``keys[i]`` (a sequence of hashable keys; a bare str/bytes/int counts as one key).

        Keys compare by value. All-str and all-int keys are encoded by pyarrow in one C++ pass (str keys
        compare by their UTF-8 text); other hashables go through a Python dict. Codes are numbered in order
        of first appearance, so they (and the resume digest) are the same in every process. A 2-D integer
        array, or an Arrow list column (one list per example, e.g. a column of an Arrow example store), is
        encoded without touching Python objects.

        Raises:
            TypeError: a key is not hashable or is null, or ``keys[i]`` is neither a list/tuple nor a single
                key.
        """
        if isinstance(keys, (pa.Array, pa.ChunkedArray)):
            return cls._from_arrow(keys)
        if isinstance(keys, np.ndarray) and keys.ndim == 2 and np.issubdtype(keys.dtype, np.integer):
            n, width = keys.shape
            ptr = np.arange(n + 1, dtype=np.int64) * width
            flat = pa.array(np.ascontiguousarray(keys, dtype=np.int64).reshape(-1))
            codes, dictionary = _dictionary_codes(flat)
            packer = cls(ptr, codes, len(dictionary))
            packer._find_hot(lambda code: dictionary[code].as_py())
            return packer
        rows = keys
        if not set(map(type, keys)) <= {list, tuple}:
            rows = [(k,) if isinstance(k, (str, bytes, int, np.integer)) else k for k in keys]
            for i, row in enumerate(rows):
                # Sets are refused: their order (hence the key codes and the resume digest) varies per process.
                if not isinstance(row, (Sequence, np.ndarray)):
                    raise TypeError(
                        f"keys[{i}] must be a list or tuple of hashable keys (e.g. [query_id, doc_id, ...]), "
                        f"got {type(row).__name__}"
                    )
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        total = int(ptr[-1])
        first = next(itertools.chain.from_iterable(rows), None)
        arrow_type = {str: pa.large_string(), int: pa.int64()}.get(type(first))
        if arrow_type is not None:
            try:
                flat = pa.array(itertools.chain.from_iterable(rows), type=arrow_type, size=total)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
                flat = None  # mixed types: use the dict below
            if flat is not None and flat.null_count == 0:
                codes, dictionary = _dictionary_codes(flat)
                packer = cls(ptr, codes, len(dictionary))
                packer._find_hot(lambda code: dictionary[code].as_py())
                return packer
        # Any hashables, one pass at C speed: a missing key gets the next code (order of first appearance).
        table: defaultdict[Hashable, int] = defaultdict(itertools.count().__next__)
        try:
            codes = np.fromiter(
                map(table.__getitem__, itertools.chain.from_iterable(rows)), dtype=np.int64, count=total
            )
        except TypeError as err:
            raise TypeError(f"every key must be hashable (str, int, tuple, ...): {err}") from None
        packer = cls(ptr, codes.astype(np.int32) if len(table) < 2**31 else codes, len(table))
        packer._find_hot(lambda code: next(itertools.islice(table, code, None)))
        return packer

    @classmethod
    def _from_arrow(cls, keys: pa.Array | pa.ChunkedArray) -> _KeyPacker:
        array = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
            raise TypeError(f"an Arrow keys column must hold one list of keys per example, got {array.type}")
        values = array.flatten()  # respects slicing, unlike .values
        if array.null_count or values.null_count:
            raise TypeError("an Arrow keys column must have no null lists or null keys")
        offsets = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        codes, dictionary = _dictionary_codes(values)
        packer = cls(offsets - offsets[0], codes, len(dictionary))
        packer._find_hot(lambda code: dictionary[code].as_py())
        return packer

    def _find_hot(self, key_of: Callable[[int], Hashable]) -> None:
        """Remember the key shared by the most examples (it bounds how many batches an epoch needs)."""
        if not len(self.codes):
            return
        counts = np.bincount(self.codes)
        code = int(np.argmax(counts))
        rows = np.repeat(np.arange(self.num_examples), np.diff(self.ptr))
        self.hot_count = len(np.unique(rows[self.codes == code]))
        self.hot_key = key_of(code)

    def digest(self) -> int:
        return _digest(self.ptr, self.codes)

    def _row_keys(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in ``rows``, key code) for every key of every row."""
        if self._width is not None:
            w = self._width
            keys = self.codes.reshape(-1, w)[rows].ravel() if w else np.empty(0, dtype=np.int64)
            return np.repeat(np.arange(len(rows)), w), keys
        starts = self.ptr[rows]
        lengths = self.ptr[rows + 1] - starts
        ends = np.cumsum(lengths)
        offsets = np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(starts - (ends - lengths), lengths)
        return np.repeat(np.arange(len(rows)), lengths), self.codes[offsets]

    def _next_stamp(self) -> int:
        self._stamp += 1
        return self._stamp

    def _take(self, cands: np.ndarray, cap: int, stamp: int) -> tuple[np.ndarray, np.ndarray, int]:
        """One vectorised greedy step: accept, in order, up to ``cap`` candidates that clash with nothing.

        A candidate is accepted when none of its keys is in the batch (``owner == stamp``) and it is the
        first non-clashing candidate of the chunk to use each of its keys. The second test is conservative
        (a candidate can lose to an earlier one that is itself rejected); such candidates are only deferred
        and are retried by :meth:`pack`.

        Returns:
            (accepted, rejected, consumed): accepted and rejected candidates among the first ``consumed``,
            in order; candidates after ``consumed`` were not looked at.
        """
        n = len(cands)
        local, keys = self._row_keys(cands)
        bad = np.zeros(n, dtype=bool)
        bad[local[self._owner[keys] == stamp]] = True
        live = ~bad[local]
        live_keys, live_rows = keys[live], local[live]
        np.minimum.at(self._first, live_keys, live_rows)
        bad[live_rows[self._first[live_keys] != live_rows]] = True
        self._first[live_keys] = _NO_ROW
        ok = np.flatnonzero(~bad)
        consumed = n
        if len(ok) > cap:
            ok = ok[:cap]
            consumed = int(ok[-1]) + 1
        accepted_mask = np.zeros(n, dtype=bool)
        accepted_mask[ok] = True
        self._owner[keys[accepted_mask[local]]] = stamp
        return cands[ok], cands[:consumed][bad[:consumed]], consumed

    def _fill(self, cands: np.ndarray, cap: int, stamp: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Walk ``cands`` in chunks until ``cap`` are accepted or none are left: (accepted, rejected, consumed)."""
        accepted: list[np.ndarray] = []
        rejected: list[np.ndarray] = []
        pos = got = 0
        while got < cap and pos < len(cands):
            want = cap - got
            acc, rej, used = self._take(cands[pos : pos + want + max(64, want // 4)], want, stamp)
            accepted.append(acc)
            rejected.append(rej)
            got += len(acc)
            pos += used
        return _concat(accepted), _concat(rejected), pos

    def pack(self, order: np.ndarray, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Cut ``order`` into no-duplicate batches of ``size``.

        Each batch first takes the examples deferred by earlier batches (oldest first), then the next ones
        in ``order``; an example that clashes is deferred to a later batch. Only once ``order`` is used up
        can a batch stay smaller: the examples left then all share a key with it.

        Returns:
            (full, short): the batches of ``size``, and the smaller ones the pass ends with (in order).
        """
        full: list[np.ndarray] = []
        short: list[np.ndarray] = []
        deferred = np.empty(0, dtype=np.int64)
        pos, n = 0, len(order)
        while pos < n or len(deferred):
            stamp = self._next_stamp()
            acc, rej, used = self._fill(deferred, size, stamp)
            parts, got = [acc], len(acc)
            pending = [rej, deferred[used:]]
            if got < size and pos < n:
                acc, rej, used = self._fill(order[pos:], size - got, stamp)
                parts.append(acc)
                pending.append(rej)
                got += len(acc)
                pos += used
            deferred = _concat(pending)
            # The stream is used up: retry the deferred ones (some lost only to rejected candidates).
            while got < size and len(deferred):
                acc, rej, used = self._fill(deferred, size - got, stamp)
                if not len(acc):
                    break
                parts.append(acc)
                got += len(acc)
                deferred = _concat([rej, deferred[used:]])
            (full if got == size else short).append(_concat(parts))
        return full, short

    def fit_to_ranks(self, batch: np.ndarray, donors: np.ndarray, report: _Report) -> np.ndarray:
        """:meth:`_Report.fit_to_ranks` with donors that share no key with the batch or with each other."""
        extra = (-len(batch)) % report.world_size
        if extra == 0:
            return batch
        stamp = self._next_stamp()
        self._owner[self._row_keys(batch)[1]] = stamp
        accepted, _, _ = self._fill(donors, extra, stamp)
        return report.fit_to_ranks(batch, accepted)


def _no_duplicate_batches(
    packer: _KeyPacker, order: np.ndarray, size: int, keep_short: bool, report: _Report
) -> list[np.ndarray]:
    """Pack ``order`` into no-duplicate global batches; keep (fitted to the ranks) or drop the smaller ones."""
    full, short = packer.pack(order, size)
    if not short:
        return full
    short_examples = sum(len(b) for b in short)
    if not keep_short:
        report.dropped_batches += len(short)
        report.dropped_batch_examples += short_examples
        return full
    if len(short) > 1:
        report.short_batches += len(short)
        report.short_examples += short_examples
    kept = list(full)
    # Pads come only from the full batches (disjoint from every short batch); with none, short batches trim.
    donors = _concat(full)
    for batch in short:
        fitted = packer.fit_to_ranks(batch, donors, report)
        if len(fitted):
            kept.append(fitted)
    return kept


# --------------------------------------------------------------------------------------------------------
# Samplers


class _ShardedBatchSampler(Sampler[list[int]]):
    """The settings and the sampler protocol every sampler here shares; epochs are kept by a held _ShardedEpochs.

    A subclass's ``__init__`` checks its leading arguments, calls ``super().__init__(batch_size, seed)``,
    checks the rest, then calls :meth:`_shard` (rank and world size) and ends with :meth:`_start_epochs`; it
    plans an epoch in :meth:`_plan`. The order of the checks decides which error a call with several bad
    arguments gets, so each subclass keeps its own.
    """

    def __init__(self, batch_size: int, seed: int):
        super().__init__()
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_int("seed", seed, 0)

    def _shard(self, rank: int | None, world_size: int | None) -> None:
        """Resolve this rank and the number of ranks; the global batch is ``batch_size`` per rank."""
        self.rank, self.world_size = _resolve_rank(rank, world_size)
        self.global_batch_size = self.batch_size * self.world_size

    def _start_epochs(self, config: dict[str, Any]) -> None:
        """Hold the epoch bookkeeping; ``config`` is every setting and data digest the plan depends on."""
        self._epochs = _ShardedEpochs(
            type(self).__name__, self._plan, rank=self.rank, world_size=self.world_size, config=config
        )

    def _plan(self, epoch: int) -> tuple[_Plan, _Report]:
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


class RandomBatchSampler(_ShardedBatchSampler):
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
        self.num_examples = _check_int("num_examples", num_examples, 0)
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

    def _plan(self, epoch: int) -> tuple[_Plan, _Report]:
        n, size = self.num_examples, self.global_batch_size
        report = _Report(n, size, self.world_size)
        perm = _rng(self.seed, epoch, _SHUFFLE).permutation(n)
        cut = n - n % size
        tail = report.last_batch(perm[cut:], perm[:cut], self.drop_last)
        return _Plan.uniform(perm[:cut].reshape(-1, size), tail), report


class LengthBucketBatchSampler(_ShardedBatchSampler):
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
        self.bucket_size_multiplier = _check_int("bucket_size_multiplier", bucket_size_multiplier, 1)
        self.drop_last = bool(drop_last)
        self._shard(rank, world_size)
        config = {
            "num_examples": len(self.lengths),
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "seed": self.seed,
            "bucket_size_multiplier": self.bucket_size_multiplier,
            "drop_last": self.drop_last,
            "data_digest": _digest(self.lengths),
        }
        self._start_epochs(config)

    def _plan(self, epoch: int) -> tuple[_Plan, _Report]:
        n, size = len(self.lengths), self.global_batch_size
        report = _Report(n, size, self.world_size)
        rng = _rng(self.seed, epoch, _SHUFFLE)
        perm = rng.permutation(n)
        bucket = np.arange(n) // (size * self.bucket_size_multiplier)
        ordered = perm[np.lexsort((self.lengths[perm], bucket))]
        cut = n - n % size
        full = ordered[:cut].reshape(-1, size)[rng.permutation(cut // size)]
        # Pad with the tail's neighbours in length: the examples just before it in sorted order.
        tail = report.last_batch(ordered[cut:], ordered[:cut][::-1], self.drop_last)
        # The smaller batch takes a random place among the shuffled full ones.
        return _Plan.uniform(full, tail, int(rng.integers(len(full) + 1))), report


class NoDuplicatesBatchSampler(_ShardedBatchSampler):
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
        self._packer = _KeyPacker.from_keys(keys)
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
        _warn_hot_key(type(self).__name__, self._packer, self.num_examples, self.global_batch_size, self.rank)

    def _plan(self, epoch: int) -> tuple[_Plan, _Report]:
        report = _Report(self.num_examples, self.global_batch_size, self.world_size)
        order = _rng(self.seed, epoch, _SHUFFLE).permutation(self.num_examples)
        batches = _no_duplicate_batches(
            self._packer, order, self.global_batch_size, not self.drop_last, report
        )
        return _Plan.from_batches(batches), report


def _warn_hot_key(sampler: str, packer: _KeyPacker, num_examples: int, global_batch: int, rank: int) -> None:
    fillable = -(-num_examples // global_batch)
    if rank == 0 and packer.hot_count > fillable:
        logger.warning(
            "%s: key %r appears in %d examples, so a no-duplicate epoch needs at least %d batches, but %d "
            "examples fill only %d global batches of %d: each epoch ends with about %d smaller batches. "
            "Deduplicate those examples or leave that key out of keys.",
            sampler, packer.hot_key, packer.hot_count, packer.hot_count, num_examples, fillable, global_batch,
            packer.hot_count - fillable,
        )  # fmt: skip


class SameTaskBatchSampler(_ShardedBatchSampler):
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
        self.organize = _check_choice("organize", organize, ORGANIZE_METHODS)
        self.drop_last = bool(drop_last)
        self.small_task = _check_choice("small_task", small_task, SMALL_TASK_POLICIES)
        self._shard(rank, world_size)

        codes, names = _factorize(tasks)
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

        self._packer: _KeyPacker | None = None
        digest_parts = [codes]
        if keys is not None:
            if self.organize == "random":
                raise ValueError(
                    "keys (no-duplicate batches) need a planned epoch: use organize='epoch', 'epoch-random' "
                    "or 'epoch-static', not 'random'"
                )
            self._packer = _KeyPacker.from_keys(keys)
            if self._packer.num_examples != self.num_examples:
                raise ValueError(
                    f"keys has {self._packer.num_examples} entries but tasks has {self.num_examples}; "
                    "give one entry per example to both"
                )
            digest_parts += [self._packer.ptr, self._packer.codes]
            _warn_hot_key(
                type(self).__name__, self._packer, self.num_examples, self.global_batch_size, self.rank
            )
        self._static: tuple[list[list[np.ndarray]], _Report] | None = None
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
            "data_digest": _digest(*digest_parts),
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
        out = {
            str(name): _check_int(f"batch_size_by_task[{name!r}]", size, 1) for name, size in sizes.items()
        }
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

    def _task_batches(self, rng: np.random.Generator, report: _Report) -> list[list[np.ndarray]]:
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
                per_task.append(_no_duplicate_batches(self._packer, members, size, keep_short, report))
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

    def _random_plan(self, epoch: int, report: _Report) -> _Plan:
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
        rng = _rng(self.seed, epoch, _SHUFFLE)
        batches = []
        if steps:
            chosen = rng.choice(len(sizes), size=steps, p=weights / weights.sum())
            for t in chosen.tolist():
                batches.append(self._members[t][rng.choice(int(sizes[t]), size=int(take[t]), replace=False)])
        return _Plan.from_batches(batches)

    def _report(self) -> _Report:
        report = _Report(self.num_examples, self.global_batch_size, self.world_size)
        if self.batch_size_by_task:
            sizes = {name: size * self.world_size for name, size in self.batch_size_by_task.items()}
            report.task_sizes = f" (batch_size_by_task: {_name_counts(sizes)})"
        return report

    def _plan(self, epoch: int) -> tuple[_Plan, _Report]:
        report = self._report()
        if self.organize == "random":
            return self._random_plan(epoch, report), report
        if self.organize == "epoch-static":
            if self._static is None:
                static_report = self._report()
                static_report.note = " (epoch-static: the same examples every epoch)"
                self._static = (self._task_batches(_rng(self.seed, _STATIC), static_report), static_report)
            per_task, report = self._static
        else:
            per_task = self._task_batches(_rng(self.seed, epoch, _SHUFFLE), report)
        order_rng = _rng(self.seed, epoch, _ORDER)
        if self.organize == "epoch-random":
            return _Plan.from_batches(_interleave_by_remaining(per_task, order_rng)), report
        batches = [b for task in per_task for b in task]
        return _Plan.from_batches([batches[i] for i in order_rng.permutation(len(batches))]), report


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
