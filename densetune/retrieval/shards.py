"""A corpus encode's state on disk: shards written one by one, checked on resume, merged at the end.

Shard ``k`` is ``doc.shard-0000k.npy`` + ``.ids`` (float32 or float16 rows), each written atomically, ids
first, so an existing shard ``.npy`` means a complete shard. ``doc.meta.json`` names the settings of the
encode under way (``complete: false``) or done; a re-run with the same settings continues after the shards
on disk, other settings are refused. The merge streams the shards (bounded memory) into ``doc.npy`` /
``doc.ids`` (compact codes quantized from the float shards there, :mod:`densetune.retrieval.quantize`) and
removes them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densetune.errors import DataError
from densetune.paths import write_text_atomic
from densetune.retrieval import quantize
from densetune.retrieval.embeddings import DOC, read_ids, read_meta, save_npy, write_ids


def shard_paths(out: Path, k: int) -> tuple[Path, Path]:
    """The ``.npy`` and ``.ids`` of shard ``k``."""
    return out / f"{DOC}.shard-{k:05d}.npy", out / f"{DOC}.shard-{k:05d}.ids"


def check_state(out: Path, settings: dict[str, Any], overwrite: bool) -> bool:
    """Whether ``out`` already holds the finished encode ``settings`` describe; outputs of another encode
    (or of unknown origin) are refused unless ``overwrite``. A rescoring store asked for before and not now
    makes another encode: ``settings`` gets ``rescore_dtype: None`` then (it is what is written)."""
    meta_path = out / f"{DOC}.meta.json"
    previous = {} if overwrite else read_meta(out, DOC)
    if previous.get("rescore_dtype") and settings.get("rescore_dtype") is None:
        settings["rescore_dtype"] = None
    if previous:
        old = {k: previous.get(k) for k in settings}
        if old != settings:
            diff = ", ".join(
                f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in settings.items() if previous.get(k) != v
            )
            raise DataError(
                f"holds the embeddings of a different encode ({diff}); use another --out or --overwrite", out
            )
    elif not overwrite and ((out / f"{DOC}.npy").exists() or any(out.glob(f"{DOC}.shard-*"))):
        raise DataError(
            f"holds {DOC} embeddings of unknown origin (no {meta_path.name}); use --overwrite", out
        )
    return bool(
        previous.get("complete") and (out / f"{DOC}.npy").is_file() and (out / f"{DOC}.ids").is_file()
    )


def remove_shards(out: Path) -> None:
    """Shards left over (when the last run stopped right after merging)."""
    for p in out.glob(f"{DOC}.shard-*"):
        p.unlink()


def start(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Mark ``out`` as holding the unfinished encode ``settings`` describe (after clearing it when
    ``overwrite``)."""
    if overwrite:
        npy = out / f"{DOC}.npy"
        compact = [quantize.rescore_path(npy), quantize.ranges_path(npy)]
        for p in [*out.glob(f"{DOC}.shard-*"), npy, out / f"{DOC}.ids", out / f"{DOC}.meta.json", *compact]:
            p.unlink(missing_ok=True)
    write_text_atomic(
        out / f"{DOC}.meta.json", json.dumps({**settings, "complete": False}, indent=2, sort_keys=True)
    )


def pending(out: Path, shards: Sequence[int], ids: Sequence[str], shard_size: int) -> list[int]:
    """Which of ``shards`` are still to encode; one already on disk (from any earlier run, with any number
    of processes) is checked against the corpus ids and kept."""
    todo = []
    for k in shards:
        if shard_paths(out, k)[0].is_file():
            _check_shard(out, k, ids[k * shard_size : (k + 1) * shard_size])
        else:
            todo.append(k)
    return todo


def write_shard(out: Path, k: int, ids: Sequence[str], rows: np.ndarray) -> None:
    """Shard ``k``: ids first, array last (an existing shard .npy means its .ids is complete)."""
    npy, ids_path = shard_paths(out, k)
    write_ids(ids_path, ids)
    save_npy(npy, rows)


def count_done(out: Path, n_shards: int) -> int:
    """Shards on disk."""
    return sum(shard_paths(out, k)[0].is_file() for k in range(n_shards))


def finish(
    out: Path, n_shards: int, n: int, dtype: str, rescore_dtype: str | None, settings: dict[str, Any]
) -> None:
    """Merge every shard into doc.npy / doc.ids, mark the encode complete, remove the shards."""
    dim = int(np.load(shard_paths(out, 0)[0], mmap_mode="r").shape[1])
    _merge_shards(out, n_shards, n, dim, dtype, rescore_dtype)
    write_text_atomic(
        out / f"{DOC}.meta.json",
        json.dumps({**settings, "complete": True, "dim": dim}, indent=2, sort_keys=True),
    )
    for k in range(n_shards):
        for p in shard_paths(out, k):
            p.unlink(missing_ok=True)


def _check_shard(out: Path, k: int, expected_ids: Sequence[str]) -> None:
    npy, ids_path = shard_paths(out, k)
    ids = read_ids(ids_path)
    if ids != list(expected_ids):
        raise DataError(
            "shard does not match the corpus (its ids differ); the corpus changed since it was written: "
            "use --overwrite",
            ids_path,
        )
    rows = np.load(npy, mmap_mode="r").shape[0]
    if rows != len(ids):
        raise DataError(f"shard has {rows} rows for {len(ids)} ids; delete it to re-encode it", npy)


def _merge_shards(out: Path, n_shards: int, n: int, dim: int, dtype: str, rescore_dtype: str | None) -> None:
    """Concatenate shards into doc.npy / doc.ids, streaming (one shard in memory at a time); compact codes
    (and their int8 ranges, rescoring store) are quantized from the float shards here, doc.npy last."""
    tmp_ids = out / f"{DOC}.ids.tmp"
    with open(tmp_ids, "w", encoding="utf-8") as f_ids:
        for k in range(n_shards):
            with open(shard_paths(out, k)[1], encoding="utf-8") as f:
                shutil.copyfileobj(f, f_ids)

    def blocks():
        return (np.load(shard_paths(out, k)[0], mmap_mode="r") for k in range(n_shards))

    npy = out / f"{DOC}.npy"
    for target, kind in ((quantize.rescore_path(npy), rescore_dtype), (npy, dtype)):
        ranges = quantize.write_rows(target, blocks, n, dim, kind) if kind else None
        if ranges is not None:  # int8: calibrated on the whole corpus, kept for the queries and later corpora
            quantize.save_ranges(npy, ranges)
    os.replace(tmp_ids, out / f"{DOC}.ids")
