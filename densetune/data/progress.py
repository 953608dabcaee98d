"""Progress of a pass over training data (``validate``, the store's cache build): a tqdm bar on stderr.

The bar counts examples (rate in examples/s) against an estimate of the total, so it shows an ETA: for a file,
its size divided by the mean line length of its first 4 MB (exact for JSONL, one record a line; a JSON document
or a BEIR directory has no estimate and the bar shows the count and rate only). It stays hidden for passes
that end within ``delay`` seconds, so small inputs and tests print nothing; off a terminal it redraws only
every 30 s, so a log file gets a line now and then instead of a stream. ``DENSETUNE_PROGRESS=0`` turns it off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

_SAMPLE = 4 << 20


def estimate_records(path: Path) -> int | None:
    """About how many lines ``path`` has (None for a directory, an empty file, or one without newlines)."""
    try:
        if not path.is_file():
            return None
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(_SAMPLE)
    except OSError:
        return None
    lines = head.count(b"\n")
    if not lines:
        return None
    return lines if len(head) == size else int(size * lines / len(head))


def data_bar(desc: str, path: Path | None = None, *, total: int | None = None, delay: float = 2.0) -> Any:
    """A tqdm bar over examples for a pass over ``path`` (``bar.update(n)`` per chunk, ``bar.close()``), or
    over ``total`` examples."""
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=estimate_records(path) if path is not None else total,
        desc=desc,
        unit="ex",
        unit_scale=True,
        file=sys.stderr,
        delay=delay,
        mininterval=0.5 if tty else 30.0,
        dynamic_ncols=tty,
        disable=os.environ.get("DENSETUNE_PROGRESS", "1") == "0",
    )
