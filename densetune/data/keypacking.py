"""No-duplicate packing: examples into batches in which no key (document id, text) is shared by two.

Used by :class:`densetune.data.samplers.NoDuplicatesBatchSampler` and by
``SameTaskBatchSampler(keys=...)``. Keys are factorised into integer codes once (Arrow dictionary
encoding where the keys come as Arrow), and batches are packed greedily in a vectorised pass.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from densetune.data.batchplan import Report, concat_indices, data_digest

# The samplers' log, wherever the planning code lives: users filter on one logger name.
logger = logging.getLogger("densetune.data.samplers")

# What NoDuplicatesBatchSampler (and SameTaskBatchSampler(keys=...)) accept as per-example keys.
Keys = Union[Sequence[Sequence[Hashable]], np.ndarray, pa.Array, pa.ChunkedArray]

_NO_ROW = np.iinfo(np.int64).max

# --------------------------------------------------------------------------------------------------------
# No-duplicate packing (used by NoDuplicatesBatchSampler and SameTaskBatchSampler(keys=...))


def _dictionary_codes(flat: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(codes in order of first appearance, distinct values) of a null-free Arrow array."""
    encoded = pc.dictionary_encode(flat)
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary


class KeyPacker:
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
    def from_keys(cls, keys: Keys) -> KeyPacker:
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
    def _from_arrow(cls, keys: pa.Array | pa.ChunkedArray) -> KeyPacker:
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
        return data_digest(self.ptr, self.codes)

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
        return concat_indices(accepted), concat_indices(rejected), pos

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
            deferred = concat_indices(pending)
            # The stream is used up: retry the deferred ones (some lost only to rejected candidates).
            while got < size and len(deferred):
                acc, rej, used = self._fill(deferred, size - got, stamp)
                if not len(acc):
                    break
                parts.append(acc)
                got += len(acc)
                deferred = concat_indices([rej, deferred[used:]])
            (full if got == size else short).append(concat_indices(parts))
        return full, short

    def fit_to_ranks(self, batch: np.ndarray, donors: np.ndarray, report: Report) -> np.ndarray:
        """:meth:`Report.fit_to_ranks` with donors that share no key with the batch or with each other."""
        extra = (-len(batch)) % report.world_size
        if extra == 0:
            return batch
        stamp = self._next_stamp()
        self._owner[self._row_keys(batch)[1]] = stamp
        accepted, _, _ = self._fill(donors, extra, stamp)
        return report.fit_to_ranks(batch, accepted)


def no_duplicate_batches(
    packer: KeyPacker, order: np.ndarray, size: int, keep_short: bool, report: Report
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
    donors = concat_indices(full)
    for batch in short:
        fitted = packer.fit_to_ranks(batch, donors, report)
        if len(fitted):
            kept.append(fitted)
    return kept


def warn_hot_key(sampler: str, packer: KeyPacker, num_examples: int, global_batch: int, rank: int) -> None:
    fillable = -(-num_examples // global_batch)
    if rank == 0 and packer.hot_count > fillable:
        logger.warning(
            "%s: key %r appears in %d examples, so a no-duplicate epoch needs at least %d batches, but %d "
            "examples fill only %d global batches of %d: each epoch ends with about %d smaller batches. "
            "Deduplicate those examples or leave that key out of keys.",
            sampler, packer.hot_key, packer.hot_count, packer.hot_count, num_examples, fillable, global_batch,
            packer.hot_count - fillable,
        )  # fmt: skip
