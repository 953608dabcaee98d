"""Compact corpus embeddings: int8 and binary codes, their files, Hamming top-k and float rescoring.

What ``densetune encode --dtype int8|binary`` writes and ``densetune search`` reads (the scheme of
sentence-transformers' ``quantize_embeddings`` and its rescoring recipe):

- ``int8``: each dimension's calibrated range ``[min, max]`` split into 256 steps; a value is stored as
  ``round((x - min) / step) - 128``. The ranges ([2, dim] float32: min row, max row) are saved beside the
  array as ``doc.int8-ranges.npy`` so search quantizes queries with the corpus' own ranges (and a later
  corpus can reuse them). A quarter of float32.
- ``binary``: one bit per dimension, ``x > 0``, packed 8 to a byte (``np.packbits``): [N, ceil(dim / 8)]
  uint8, 1/32 of float32. Searched by Hamming distance between the query's and the documents' bits.
- Search scores int8 codes with the float query (against the dequantized values, the codes never decoded)
  and binary codes by Hamming distance. A rescoring store, ``doc.rescore.npy`` (int8 beside binary codes,
  float16 / float32 beside either; memory-mapped: only the candidates' rows are read), gives the
  ``top_k * rescore_multiplier`` candidates their scores with the float query; binary codes without a
  store are rescored as +-1 vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from densetune.errors import DataError, DensetuneError
from densetune.paths import atomic_path
from densetune.retrieval.topk import sort_rows

FLOAT_DTYPES = {"float32": np.float32, "float16": np.float16}
COMPACT = ("int8", "binary")
STORAGE_DTYPES = (*FLOAT_DTYPES, *COMPACT)
# the numpy dtype each stored kind has on disk
NUMPY_DTYPES = {**FLOAT_DTYPES, "int8": np.int8, "binary": np.uint8}
RESCORE_DTYPES = ("int8", "float16", "float32")
DEFAULT_RESCORE_MULTIPLIER = 4
BLOCK_ROWS = 65536


def ranges_path(npy: str | Path) -> Path:
    """Where the int8 ranges of an encode output live: ``doc.int8-ranges.npy`` beside ``doc.npy`` (one per
    directory and kind; the rescoring store ``doc.rescore.npy`` shares its kind's ranges)."""
    npy = Path(npy)
    return npy.with_name(f"{npy.name.split('.')[0]}.int8-ranges.npy")


def rescore_path(npy: str | Path) -> Path:
    """The rescoring store beside ``doc.npy``: ``doc.rescore.npy``."""
    npy = Path(npy)
    return npy.with_name(f"{npy.name.split('.')[0]}.rescore.npy")


def stored_dtype(array: np.ndarray) -> str:
    """The stored kind of an array: float32, float16, int8, or binary (uint8 packed bits)."""
    for name, dt in NUMPY_DTYPES.items():
        if array.dtype == dt:
            return name
    raise DensetuneError(f"embeddings of dtype {array.dtype}; expected one of {', '.join(STORAGE_DTYPES)}")


def width(dtype: str, dim: int) -> int:
    """Columns of the stored array for ``dim`` float dimensions."""
    return (dim + 7) // 8 if dtype == "binary" else dim


# ---------------------------------------------------------------------------------------------------------
# Codecs


def calibrate_int8(blocks: Iterable[np.ndarray]) -> np.ndarray:
    """Per-dimension ``[min, max]`` ([2, dim] float32) over all rows, read block by block."""
    lo = hi = None
    for block in blocks:
        block = np.asarray(block, dtype=np.float32)
        if block.shape[0] == 0:
            continue
        b_lo, b_hi = block.min(axis=0), block.max(axis=0)
        lo = b_lo if lo is None else np.minimum(lo, b_lo)
        hi = b_hi if hi is None else np.maximum(hi, b_hi)
    if lo is None:
        raise DensetuneError("no rows to calibrate int8 ranges on")
    return np.stack([lo, hi]).astype(np.float32)


def int8_steps(ranges: np.ndarray) -> np.ndarray:
    """Each dimension's step: ``(max - min) / 255`` (float32 values are ``min + (code + 128) * step``)."""
    steps = (ranges[1].astype(np.float64) - ranges[0]) / 255.0
    return np.where(steps > 0, steps, 1.0)  # a constant dimension: any step maps it to one code


def quantize_int8(emb: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Float rows -> int8 codes with ``ranges`` ([2, dim]: min, max); values outside are clipped. Computed
    in float64 block by block (a million rows do not need their float64 copy at once)."""
    emb = np.asarray(emb)
    if emb.shape[-1] != ranges.shape[1]:
        raise DensetuneError(
            f"int8 ranges are for dim {ranges.shape[1]}; the embeddings have dim {emb.shape[-1]}"
        )
    out = np.empty(emb.shape, dtype=np.int8)
    lo, steps = ranges[0].astype(np.float64), int8_steps(ranges)
    flat, codes = emb.reshape(-1, emb.shape[-1]), out.reshape(-1, emb.shape[-1])
    for start in range(0, flat.shape[0], BLOCK_ROWS):
        block = np.rint((flat[start : start + BLOCK_ROWS].astype(np.float64) - lo) / steps) - 128
        codes[start : start + BLOCK_ROWS] = np.clip(block, -128, 127)
    return out


def dequantize_int8(codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """int8 codes -> float32 rows (each value at its step; within half a step of the original)."""
    steps = int8_steps(ranges).astype(np.float32)
    return (np.asarray(codes, dtype=np.float32) + 128) * steps + ranges[0].astype(np.float32)


def quantize_binary(emb: np.ndarray) -> np.ndarray:
    """Float rows -> packed sign bits (``x > 0``), [rows, ceil(dim / 8)] uint8."""
    return np.packbits(np.asarray(emb) > 0, axis=-1)


def unpack_binary(codes: np.ndarray, dim: int) -> np.ndarray:
    """Packed bits -> float32 rows of +-1 (the float view of a binary code, for rescoring)."""
    bits = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=-1, count=dim)
    return bits.astype(np.float32) * 2 - 1


def encode_rows(emb: np.ndarray, dtype: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """Float rows in the stored form ``dtype`` names (int8 needs ``ranges``)."""
    if dtype == "binary":
        return quantize_binary(emb)
    if dtype == "int8":
        if ranges is None:
            raise DensetuneError("int8 needs calibrated ranges")
        return quantize_int8(emb, ranges)
    return np.asarray(emb, dtype=NUMPY_DTYPES[dtype])


# ---------------------------------------------------------------------------------------------------------
# Files


def write_rows(
    npy: str | Path,
    blocks: Callable[[], Iterable[np.ndarray]],
    rows: int,
    dim: int,
    dtype: str,
    ranges: np.ndarray | None = None,
) -> np.ndarray | None:
    """Write float rows, streamed block by block (one block in memory), as ``npy`` in ``dtype``, atomically.

    Args:
        npy: the final ``.npy``; written under a temporary name and renamed.
        blocks: a function returning the row blocks in order (called twice for int8 without ``ranges``: once
            to calibrate, once to write).
        rows, dim: the shape of the float rows.
        dtype: float32 | float16 | int8 | binary.
        ranges: int8 ranges to use (None: calibrated on these rows).

    Returns:
        The int8 ranges used (the caller saves them with :func:`save_ranges`), else None.

    Raises:
        DataError: the blocks hold another number of rows than ``rows``.
    """
    npy = Path(npy)
    if dtype == "int8" and ranges is None:
        ranges = calibrate_int8(blocks())
    with atomic_path(npy) as tmp:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=NUMPY_DTYPES[dtype], shape=(rows, width(dtype, dim))
        )
        row = 0
        for block in blocks():
            if row + block.shape[0] > rows:
                row += block.shape[0]
                break
            out[row : row + block.shape[0]] = encode_rows(block, dtype, ranges)
            row += block.shape[0]
        out.flush()
        del out
        if row != rows:
            raise DataError(
                f"the inputs hold {row} rows, expected {rows}; re-run with --overwrite", npy.parent
            )
    return ranges if dtype == "int8" else None


def save_ranges(npy: str | Path, ranges: np.ndarray) -> Path:
    """Save int8 ranges beside ``npy`` (:func:`ranges_path`), atomically."""
    path = ranges_path(npy)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(ranges, dtype=np.float32))
    return path


def load_ranges(path: str | Path, dim: int | None = None) -> np.ndarray:
    """int8 ranges from a ``.int8-ranges.npy`` ([2, dim] float32, min <= max), checked.

    Raises:
        DataError: missing, unreadable, wrong shape, or min above max.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            "int8 ranges not found; expected the .int8-ranges.npy densetune encode --dtype int8 writes", path
        )
    try:
        ranges = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise DataError(f"not a readable .npy array: {err}", path) from None
    if ranges.ndim != 2 or ranges.shape[0] != 2 or (dim is not None and ranges.shape[1] != dim):
        want = f"[2, {dim}]" if dim is not None else "[2, dim]"
        raise DataError(
            f"int8 ranges of shape {list(ranges.shape)}; expected {want} (min row, max row)", path
        )
    ranges = ranges.astype(np.float32)
    if not np.isfinite(ranges).all() or (ranges[0] > ranges[1]).any():
        raise DataError("int8 ranges hold a non-finite value or a min above its max", path)
    return ranges


class CompactCorpus:
    """Compact document codes (int8 or binary) and what rescoring reads.

    Attributes:
        codes: [N, width] int8 or uint8 (memory-mapped as loaded).
        dtype: ``int8`` or ``binary``.
        dim: float dimensions the codes stand for.
        ranges: int8 ranges (for int8 codes, or an int8 rescoring store), else None.
        store: the rescoring store [N, dim] (int8 or float, memory-mapped) or None (rescore with the codes).
    """

    def __init__(self, codes: np.ndarray, dtype: str, dim: int, ranges=None, store=None):
        self.codes, self.dtype, self.dim, self.ranges, self.store = codes, dtype, dim, ranges, store

    @classmethod
    def open(cls, npy: str | Path, codes: np.ndarray, dtype: str, dim: int) -> CompactCorpus:
        """The codes of ``npy`` (already loaded), with the ranges and rescoring store found beside it."""
        if codes.shape[1] != width(dtype, dim):
            raise DataError(
                f"{dtype} codes of width {codes.shape[1]} for dim {dim}; expected {width(dtype, dim)}", npy
            )
        store = None
        if rescore_path(npy).is_file():
            store = np.load(rescore_path(npy), mmap_mode="r", allow_pickle=False)
            kind = stored_dtype(store)
            if kind == "binary" or store.shape != (codes.shape[0], dim):
                raise DataError(
                    f"rescoring store of {kind} {list(store.shape)}; expected int8 or float [{codes.shape[0]}, {dim}]",
                    rescore_path(npy),
                )
        needs_ranges = dtype == "int8" or (store is not None and store.dtype == np.int8)
        ranges = load_ranges(ranges_path(npy), dim) if needs_ranges else None
        return cls(codes, dtype, dim, ranges, store)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, dim)``: the float shape the codes stand for."""
        return self.codes.shape[0], self.dim

    @property
    def rescores(self) -> bool:
        """Whether candidates get rescored: with a store, or binary codes as +-1 (int8 codes alone are
        already scored against their dequantized values)."""
        return self.store is not None or self.dtype == "binary"

    @property
    def rescore_dtype(self) -> str:
        """What rescoring reads: the store's dtype, else the codes'."""
        return stored_dtype(self.store) if self.store is not None else self.dtype

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Float32 [len(rows), dim] document vectors for rescoring (``rows`` ascending)."""
        source = self.store if self.store is not None else self.codes
        block = np.asarray(source[rows])
        if block.dtype == np.int8:
            return dequantize_int8(block, self.ranges)
        if block.dtype == np.uint8:
            return unpack_binary(block, self.dim)
        return block.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Search


def hamming_search(query_bits: np.ndarray, doc_bits: np.ndarray, k: int, *, chunk: int = BLOCK_ROWS):
    """Top-k by Hamming distance (faiss ``IndexBinaryFlat``, exact; codes added chunk by chunk, so a
    memory-mapped corpus works).

    Returns:
        ``(distances int64 [Q, k], rows int64 [Q, k])``, ascending distance, equal ones by ascending row;
        ``k = min(k, N)``. Which of several documents tied at the k-th distance is kept is unspecified.
    """
    import faiss

    n, nbytes = doc_bits.shape
    index = faiss.IndexBinaryFlat(nbytes * 8)
    for start in range(0, n, chunk):
        index.add(np.ascontiguousarray(doc_bits[start : start + chunk], dtype=np.uint8))
    k = min(k, n)
    dist, rows = index.search(np.ascontiguousarray(query_bits, dtype=np.uint8), k)
    neg, rows = sort_rows(-dist.astype(np.int64), rows.astype(np.int64))
    return -neg, rows


def rescore(
    query: np.ndarray,
    candidates: np.ndarray,
    vectors: Callable[[np.ndarray], np.ndarray],
    top_k: int,
    *,
    query_block: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Score each query's candidate rows again with its float vector and keep the best ``top_k``.

    Args:
        query: [Q, dim] float queries.
        candidates: [Q, C] int64 document rows (-1: an empty slot, kept out).
        vectors: rows (ascending, unique) -> float32 [len(rows), dim] document vectors.
        top_k: results kept per query (at most C).
        query_block: queries rescored together (each block reads its candidates' vectors once).

    Returns:
        ``(scores float32 [Q, k], rows int64 [Q, k])`` in the order of :func:`densetune.retrieval.topk.sort_rows`.
    """
    query = np.asarray(query, dtype=np.float32)
    k = min(top_k, candidates.shape[1])
    scores_out = np.full((len(query), k), -np.inf, dtype=np.float32)
    rows_out = np.full((len(query), k), -1, dtype=np.int64)
    for qs in range(0, len(query), query_block):
        cand = candidates[qs : qs + query_block]
        unique, inverse = np.unique(np.where(cand < 0, 0, cand), return_inverse=True)
        docs = vectors(unique)  # [U, dim]
        gathered = docs[inverse.reshape(cand.shape)]  # [block, C, dim]
        scores = np.matmul(gathered, query[qs : qs + query_block, :, None])[..., 0]
        scores = np.where(cand < 0, -np.inf, scores).astype(np.float32)
        s, r = sort_rows(scores, cand)
        scores_out[qs : qs + len(cand)], rows_out[qs : qs + len(cand)] = s[:, :k], r[:, :k]
    return scores_out, rows_out
