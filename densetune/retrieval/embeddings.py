"""The files an encode writes and every later stage reads: ``{kind}.npy`` + ``{kind}.ids`` + ``{kind}.meta.json``.

``kind`` is ``query`` or ``doc``; rows of each ``.npy`` are aligned with the lines of its ``.ids`` (one id per
line). ``*.meta.json`` records what produced the embeddings (model, max length, dtype, whether the model
normalises, rows, dim) so a later stage can check that queries and documents match. Every file is written
atomically (temporary name, then rename). Compact corpus codes (``encode --dtype int8|binary``) are read
back as a :class:`densetune.retrieval.quantize.CompactCorpus`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densetune.errors import DataError, DensetuneError
from densetune.paths import atomic_path, write_text_atomic
from densetune.retrieval import quantize

QUERY, DOC = "query", "doc"
DTYPES = quantize.FLOAT_DTYPES  # float storage; --dtype int8 | binary: compact corpus codes (quantize.py)


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` under a temporary name, then renamed."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def write_ids(path: Path, ids: Sequence[str]) -> None:
    """Ids one per line, atomically; an id holding a line break is refused."""
    for i in ids:
        if "\n" in i or "\r" in i:
            raise DataError(f"id {i!r} contains a line break; ids are written one per line", path)
    write_text_atomic(path, "".join(f"{i}\n" for i in ids))


def read_ids(path: str | Path) -> list[str]:
    """Ids one per line (trailing ``\\r`` tolerated)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("ids file not found", path)
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f]


def write_embeddings(
    out_dir: str | Path,
    kind: str,
    ids: Sequence[str],
    embeddings: np.ndarray,
    *,
    dtype: str = "float32",
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``{kind}.npy`` + ``{kind}.ids`` (+ ``{kind}.meta.json``) atomically; ``kind`` is query or doc."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(ids) != embeddings.shape[0]:
        raise DensetuneError(f"{len(ids)} ids for {embeddings.shape[0]} embedding rows")
    write_ids(out / f"{kind}.ids", ids)
    save_npy(out / f"{kind}.npy", np.ascontiguousarray(embeddings, dtype=DTYPES[dtype]))
    info = dict(meta or {})
    info.update(
        rows=len(ids), dim=int(embeddings.shape[1]) if embeddings.ndim == 2 else 0, dtype=dtype, complete=True
    )
    write_text_atomic(out / f"{kind}.meta.json", json.dumps(info, indent=2, sort_keys=True))
    return out


def load_embeddings(
    directory: str | Path, kind: str, *, mmap: bool = True, compact: bool = False
) -> tuple[list[str], Any]:
    """Read ``{kind}.ids`` and ``{kind}.npy`` from an encode output directory.

    Args:
        directory: the directory (a path to the ``.npy`` itself is accepted too).
        kind: ``query`` or ``doc``.
        mmap: memory-map the array (``np.load(mmap_mode="r")``) instead of reading it.
        compact: accept int8 / binary codes (``encode --dtype int8|binary``), returned as a
            :class:`densetune.retrieval.quantize.CompactCorpus`; False: only float embeddings.

    Raises:
        DataError: missing files, rows and ids that differ in number, or compact codes where float
            embeddings are expected (or whose ``.meta.json`` names another dtype).
    """
    directory = Path(directory)
    if directory.suffix == ".npy":
        npy, ids_path = directory, directory.with_suffix(".ids")
    else:
        npy, ids_path = directory / f"{kind}.npy", directory / f"{kind}.ids"
    if not npy.is_file():
        shards = sorted(npy.parent.glob(f"{kind}.shard-*.npy"))
        hint = (
            "; it holds shards of an unfinished encode: re-run densetune encode to finish" if shards else ""
        )
        raise DataError(f"no {npy.name}{hint}; expected the output of densetune encode", npy.parent)
    ids = read_ids(ids_path)
    try:
        emb = np.load(npy, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as err:
        raise DataError(f"not a readable .npy array: {err}", npy) from None
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise DataError(
            f"{len(ids)} ids in {ids_path.name} but array shape {emb.shape}; expected one row per id", npy
        )
    _check_finite(emb, npy, ids)
    return ids, _compact_or_float(npy, emb, compact)


def _compact_or_float(npy: Path, emb: np.ndarray, compact: bool) -> Any:
    """Float embeddings as they are; compact codes as a CompactCorpus, when the caller reads them and the
    ``.meta.json`` beside them agrees."""
    stem = npy.name.split(".")[0]
    meta = read_meta(npy.parent, stem)
    named = meta.get("dtype")
    held = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "binary"}.get(emb.dtype, str(emb.dtype))
    if held not in quantize.COMPACT and named not in quantize.COMPACT:
        return emb
    meta_name = f"{stem}.meta.json"
    if held != named:
        raise DataError(f"holds {held} rows but {meta_name} names dtype {named!r}; re-encode it", npy)
    if not compact:
        raise DataError(
            f"holds {held} codes (densetune encode --dtype {held}); only densetune search --corpus reads "
            "them: expected float32 or float16 embeddings here",
            npy,
        )
    return quantize.CompactCorpus.open(npy, emb, held, int(meta.get("dim", 0)))


def _check_finite(emb: np.ndarray, npy: Path, ids: Sequence[str], rows: int = 65536) -> None:
    """A NaN or infinite embedding would give NaN scores silently: refuse it, naming the row and its id.
    Read in blocks of ``rows`` so a memory-mapped array larger than RAM is checked in bounded memory."""
    if emb.dtype.kind != "f":
        return  # integers cannot be NaN
    for start in range(0, emb.shape[0], rows):
        bad = ~np.isfinite(np.asarray(emb[start : start + rows])).all(axis=1)
        if bad.any():
            row = start + int(np.argmax(bad))
            more = int(bad.sum()) - 1
            raise DataError(
                f"embedding of id {ids[row]!r} holds NaN or inf"
                + (f" ({more} more such rows after it in this block)" if more else "")
                + "; expected finite embeddings (re-encode with a model that gives finite outputs)",
                npy,
                f"row {row}",
            )


def read_meta(directory: str | Path, kind: str) -> dict[str, Any]:
    """``{kind}.meta.json`` of an encode output, or {} when absent."""
    path = Path(directory) / f"{kind}.meta.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg}", path, err.lineno) from None


def lines_digest(ids: Sequence[str]) -> str:
    """SHA-1 of strings as lines: identifies a list of ids or texts in a ``.meta.json``."""
    h = hashlib.sha1()
    for i in ids:
        h.update(i.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
