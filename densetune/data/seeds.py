"""Seeds: :func:`derive_seed`, the one way a per-item random choice is seeded (group selection, ICL examples).

Every choice that must agree across DataLoader workers, ranks and resumed runs builds its own
``random.Random(derive_seed(...))`` from the values that identify it (seed, epoch, index...), never the global
RNG and never Python's salted ``hash()``.
"""

from __future__ import annotations

import hashlib
import operator


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from the given values, the same in every process.

    Python's ``hash()`` of a string changes per process (PYTHONHASHSEED), so it cannot seed selections that
    must agree across workers, ranks and resumed runs; a cryptographic digest of the values can.
    """
    key = "\x1f".join(_canonical(part) for part in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def _canonical(part: object) -> str:
    # Integers of any type (numpy, torch, bool excluded) must give the same seed as the plain int: samplers
    # hand out numpy indices, and repr(np.int64(3)) is not repr(3).
    if isinstance(part, str):
        return "s" + part
    if not isinstance(part, bool):
        try:
            return "i" + str(operator.index(part))
        except TypeError:
            pass
    return "r" + repr(part)
