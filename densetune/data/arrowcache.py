"""The on-disk cache every converted source lives in: keys, directories, and Arrow IPC files.

A conversion (a corpus, a training file's examples) is written once under ``cache_dir/<kind>/<key>``, keyed
by :func:`cache_key` over the sources' :func:`fingerprint` (paths, sizes, modification times) and the data
caps in force, built in a temporary directory and moved into place with :func:`publish_dir`. Tables are
Arrow IPC files written in large record batches (:class:`ArrowWriter`) and memory-mapped back
(:func:`open_table`), so their size costs disk, not RAM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from densetune.caps import data_caps

# 2: examples carry `category`; 3: corpus rows keep their other fields in `extra`; 4: examples too
CACHE_VERSION = 4
# Arrow record batches are written up to this many bytes, so a column is a handful of chunks and a
# take() over it is a few vectorised calls (pyarrow's own ChunkedArray.take is slow with many chunks).
_BATCH_BYTES = 64 << 20


def default_cache_dir() -> Path:
    """``$DENSETUNE_CACHE`` if set, else ``~/.cache/densetune``."""
    env = os.environ.get("DENSETUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "densetune"


def fingerprint(paths: Iterable[Path]) -> list[list[Any]]:
    """``[absolute path, size, mtime_ns]`` of each file: what a cached conversion is keyed by."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return out


def cache_key(*parts: Any) -> str:
    """A short stable hex key for JSON-serialisable ``parts`` and the data caps in force (:mod:`densetune.caps`:
    a capped read is never served to a full one, nor the reverse)."""
    caps = data_caps()
    blob = json.dumps(
        [CACHE_VERSION, *parts, *([caps] if caps else [])], sort_keys=True, default=str
    ).encode()
    return hashlib.sha1(blob).hexdigest()[:20]


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished cache directory into place; if another process got there first, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


class ArrowWriter:
    """Append tables to an Arrow IPC file, written as record batches of about 64 MB.

    Few large batches keep a memory-mapped column to a handful of chunks, so positional takes stay cheap;
    memory is bounded by the batch size, not the file size.
    """

    def __init__(self, path: Path, schema: pa.Schema):
        self.schema = schema
        self.rows = 0
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)
        self._pending: list[pa.Table] = []
        self._size = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table.cast(self.schema))
        self._size += table.nbytes
        self.rows += table.num_rows
        if self._size >= _BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            merged = pa.concat_tables(self._pending).combine_chunks()
            for batch in merged.to_batches(max_chunksize=merged.num_rows):
                self._writer.write_batch(batch)
        self._pending, self._size = [], 0

    def close(self) -> int:
        self._flush()
        self._writer.close()
        self._sink.close()
        return self.rows


def write_table(path: Path, batches: Iterable[pa.Table], schema: pa.Schema) -> int:
    """Write tables to an Arrow IPC file (see :class:`ArrowWriter`); returns the number of rows."""
    writer = ArrowWriter(path, schema)
    try:
        for table in batches:
            writer.write(table)
    finally:
        rows = writer.close()
    return rows


def open_table(path: Path) -> pa.Table:
    """Memory-map an Arrow IPC file written by :func:`write_table` (zero-copy)."""
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
