"""Host memory for model work on a CPU: reuse freed activation memory instead of returning it to the kernel.

Why: glibc's malloc serves every request above its mmap threshold (32 MiB at most) with a fresh ``mmap`` and
unmaps it on ``free``. A CPU training step or inference batch allocates activations of tens to hundreds of
MiB each, so every step the kernel maps, zero-fills and unmaps gigabytes of pages again. Measured with
``bench/bench_train.py --warmup 3 --steps 3 --skip-peer`` on the 2-core CI-class machine (MiniLM-L6,
32 x (1+3), q 64 / p 256, bf16 autocast): without this, 182 s of system time against 133 s of user time and
0.96 samples/s; inside :func:`reuse_freed_memory` 39 s of system time (the heap's first touch, in the first
step) and 2.5 samples/s, at a peak resident size of 15.1 instead of 13.1 GB (docs/BENCHMARKS.md).

Inside the context, large blocks come from the heap (``M_MMAP_MAX`` 0) and the heap is not trimmed
(``M_TRIM_THRESHOLD`` at its largest), so a step's activations reuse the last step's pages. The cost is the
higher peak resident size (the heap keeps what it once held, in pieces: :data:`HEAP_PEAK_FACTOR`). On
leaving the outermost context glibc's defaults come back and the kept heap is returned to the system
(``malloc_trim``). Elsewhere than Linux glibc, or with ``DENSETUNE_HOST_MALLOC=system`` in the environment,
the context changes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Iterator

ENV = "DENSETUNE_HOST_MALLOC"

# mallopt parameters (malloc.h) and the glibc defaults restored on leaving
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_NEVER = -1  # mallopt's int turned into glibc's size_t: the largest threshold, so the heap is never trimmed

# Peak resident size inside the context relative to the training loop's memory estimate
# (densetune/train/memory.py): the SciFact recipe (32 x (1+3), p 256, 78 steps, bf16) peaked at 17.6 GB against
# an estimate of 9.0 GiB (1.82x; the same steps under glibc's defaults peak ~15% lower). Training reuses
# memory only where its estimate times this fits the memory the run may use, so a machine that fits the
# run only without the reuse runs it without.
HEAP_PEAK_FACTOR = 2.0

_lock = threading.Lock()
_depth = 0


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None; looked
    up once per process (the inference loop enters the context on every call)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it; musl and macOS raise AttributeError)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


def available() -> bool:
    """Whether :func:`reuse_freed_memory` takes effect here (glibc, and not turned off by ``ENV``)."""
    return os.environ.get(ENV, "").strip().lower() != "system" and _glibc() is not None


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Keep freed large blocks in the heap for reuse while inside; yields whether that is in effect.

    Nested and concurrent uses count: the settings change on entering the first and are restored on leaving
    the last. ``enabled=False`` (e.g. a model on a GPU, whose activations are not host memory) does nothing.
    """
    global _depth
    libc = _glibc() if enabled and available() else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _NEVER)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
