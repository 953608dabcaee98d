"""Document ids to row numbers: a 64-bit FNV-1a hash of each id and an open-addressing index over them.

Both are vectorised with numpy (the same hash in pure Python for one id), and the index is two ``.npy``
files that :class:`densetune.data.corpus.Corpus` memory-maps, so looking up ids in a corpus of tens of
millions of passages touches a few pages and loads nothing up front.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Column", "IdIndex", "hash_id", "hash_ids"]

# ---------------------------------------------------------------------------------------------------------
# Id hashing and the open-addressing index (vectorised with numpy; the same hash in pure Python for one id)

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1


def hash_id(doc_id: str) -> int:
    """64-bit FNV-1a of the UTF-8 bytes of ``doc_id`` (equal to :func:`hash_ids` element-wise)."""
    h = _FNV_OFFSET
    for b in doc_id.encode("utf-8"):
        h = ((h ^ b) * _FNV_PRIME) & _MASK64
    return h


def hash_ids(values: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
    """64-bit FNV-1a of each string, vectorised: one numpy pass per byte position, longest strings first."""
    if isinstance(values, pa.ChunkedArray):
        parts = [hash_ids(c) for c in values.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    arr = values if isinstance(values, pa.Array) else pa.array(values, type=pa.string())
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.uint64)
    off_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=off_type)[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    lens = np.diff(offsets)
    order = np.argsort(-lens, kind="stable")
    starts = offsets[:-1][order]
    neg_sorted = -lens[order]
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    prime = np.uint64(_FNV_PRIME)
    for j in range(int(lens.max())):
        count = int(np.searchsorted(neg_sorted, -j, side="left"))  # strings longer than j
        seg = h[:count]
        seg ^= data[starts[:count] + j]
        seg *= prime
    out = np.empty(n, dtype=np.uint64)
    out[order] = h
    return out


class Column:
    """A memory-mapped Arrow column with a fast positional ``take`` (grouping rows by chunk)."""

    def __init__(self, column: pa.ChunkedArray):
        self.chunks = [c for c in column.chunks if len(c)] or [pa.array([], type=column.type)]
        self.bounds = np.cumsum([0] + [len(c) for c in self.chunks])

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def take_arrow(self, rows: np.ndarray) -> pa.Array:
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.chunks) == 1:
            return self.chunks[0].take(pa.array(rows))
        which = np.searchsorted(self.bounds, rows, side="right") - 1
        if len(rows) and (which == which[0]).all():
            return self.chunks[which[0]].take(pa.array(rows - self.bounds[which[0]]))
        order = np.argsort(which, kind="stable")
        pieces = []
        for c in np.unique(which):
            sel = order[which[order] == c]
            pieces.append(self.chunks[c].take(pa.array(rows[sel] - self.bounds[c])))
        merged = pa.concat_arrays(pieces)
        inverse = np.empty(len(rows), dtype=np.int64)
        inverse[order] = np.arange(len(rows))
        return merged.take(pa.array(inverse))

    def take(self, rows: np.ndarray) -> list:
        if len(rows) == 0:
            return []
        if len(self.chunks) > 1 and len(rows) <= 64:  # a few values: scalar access beats per-chunk takes
            rows = np.asarray(rows, dtype=np.int64)
            which = (np.searchsorted(self.bounds, rows, side="right") - 1).tolist()
            local = (rows - self.bounds[which]).tolist()
            return [self.chunks[c][i].as_py() for c, i in zip(which, local)]
        return self.take_arrow(rows).to_pylist()


class IdIndex:
    """Open-addressing (linear probing) hash table from document id to row, stored as two numpy arrays.

    ``slots`` (int64, a power of two at least twice the number of ids, -1 = empty) holds rows;
    ``hashes`` (uint64, one per row) holds each row's id hash. Both are saved as ``.npy`` and memory-mapped.
    A hit is confirmed against the id string itself, so a hash collision never returns a wrong row.
    """

    def __init__(self, slots: np.ndarray, hashes: np.ndarray, ids: Column):
        # Plain ndarray views of the (possibly memory-mapped) arrays: np.memmap indexing is slow.
        self.slots = np.asarray(slots)
        self.hashes = np.asarray(hashes)
        self.ids = ids
        self.mask = len(slots) - 1

    @classmethod
    def build(cls, ids: Column) -> tuple[IdIndex, list[tuple[int, int]]]:
        """Index every id; returns the index and ``(first row, duplicate row)`` for each repeated id."""
        n = len(ids)
        hashes = np.concatenate([hash_ids(c) for c in ids.chunks]) if n else np.zeros(0, np.uint64)
        size = 1 << max(3, (2 * n - 1).bit_length())
        mask = size - 1
        slots = np.full(size, -1, dtype=np.int64)
        pos = (hashes & np.uint64(mask)).astype(np.int64)
        pending = np.arange(n, dtype=np.int64)
        duplicates: list[tuple[int, int]] = []
        while pending.size:
            p = pos[pending]
            occupant = slots[p]
            free = occupant < 0
            done = np.zeros(len(pending), dtype=bool)
            same = ~free & (hashes[np.maximum(occupant, 0)] == hashes[pending])
            if same.any():
                idx = np.flatnonzero(same)
                equal = np.asarray(
                    pc.equal(ids.take_arrow(pending[idx]), ids.take_arrow(occupant[idx])).to_numpy(
                        zero_copy_only=False
                    )
                )
                for k in idx[equal]:
                    duplicates.append((int(occupant[k]), int(pending[k])))
                done[idx[equal]] = True
            free_idx = np.flatnonzero(free)
            _, first = np.unique(p[free_idx], return_index=True)  # lowest row wins each contested slot
            winners = free_idx[first]
            slots[p[winners]] = pending[winners]
            done[winners] = True
            # Rows that found their slot taken move on; rows that lost a race for a free slot look at the
            # same slot again (now holding the winner, which may be their duplicate).
            advance = pending[~free & ~done]
            pos[advance] = (pos[advance] + 1) & mask
            pending = pending[~done]
        duplicates.sort(key=lambda d: d[1])
        return cls(slots, hashes, ids), duplicates

    def save(self, directory: Path) -> None:
        np.save(directory / "slots.npy", self.slots)
        np.save(directory / "hashes.npy", self.hashes)

    @classmethod
    def load(cls, directory: Path, ids: Column) -> IdIndex:
        return cls(
            np.load(directory / "slots.npy", mmap_mode="r"),
            np.load(directory / "hashes.npy", mmap_mode="r"),
            ids,
        )

    def lookup(self, doc_ids: list[str]) -> np.ndarray:
        """Row of each id, or -1 for an id that is not in the corpus."""
        m = len(doc_ids)
        arr = pa.array(doc_ids, type=pa.string())
        if m <= 32:  # scalar probing beats numpy's per-call overhead for a handful of ids
            h = np.array([hash_id(d) for d in doc_ids], dtype=np.uint64)
            rows = np.array([self._probe_hash(int(x)) for x in h], dtype=np.int64)
        else:
            h = hash_ids(arr)
            slots, hashes = self.slots, self.hashes
            rows = np.full(m, -1, dtype=np.int64)
            pos = (h & np.uint64(self.mask)).astype(np.int64)
            pending = np.arange(m)
            while pending.size:
                r = slots[pos[pending]]
                empty = r < 0
                hit = ~empty & (hashes[np.maximum(r, 0)] == h[pending])
                rows[pending[hit]] = r[hit]
                pending = pending[~(empty | hit)]
                pos[pending] = (pos[pending] + 1) & self.mask
        found = np.flatnonzero(rows >= 0)
        if found.size:
            # Confirm against the strings: a 64-bit collision must not map an unknown id to a wrong row.
            same = pc.equal(self.ids.take_arrow(rows[found]), arr.take(pa.array(found)))
            for k in found[~same.to_numpy(zero_copy_only=False)].tolist():
                rows[k] = self._probe_exact(doc_ids[k], int(h[k]))
        return rows

    def _probe_hash(self, h: int) -> int:
        pos = h & self.mask
        while True:
            r = int(self.slots[pos])
            if r < 0 or int(self.hashes[r]) == h:
                return r
            pos = (pos + 1) & self.mask

    def _probe_exact(self, doc_id: str, h: int) -> int:
        """Scalar probe for one id, confirming each same-hash candidate against the id string."""
        pos = h & self.mask
        while True:
            r = int(self.slots[pos])
            if r < 0:
                return -1
            if int(self.hashes[r]) == h and self.ids.take(np.array([r]))[0] == doc_id:
                return r
            pos = (pos + 1) & self.mask
