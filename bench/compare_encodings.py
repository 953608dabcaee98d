"""Two ``densetune encode`` outputs of the same corpus side by side: ids and order identical, and how far apart
the embeddings are (max absolute difference, min cosine). Exits 1 when the ids differ.

    python bench/compare_encodings.py runs/enc_one_process runs/enc_torchrun
"""

from __future__ import annotations

import sys

import numpy as np

from densetune.retrieval.embeddings import load_embeddings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    (ids_a, emb_a), (ids_b, emb_b) = (load_embeddings(d, "doc") for d in argv)
    if list(ids_a) != list(ids_b):
        print(f"ids differ: {len(ids_a)} vs {len(ids_b)} documents", file=sys.stderr)
        return 1
    a, b = np.asarray(emb_a, dtype=np.float64), np.asarray(emb_b, dtype=np.float64)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(
        f"{len(ids_a)} documents, ids and order identical; max |difference| {np.abs(a - b).max():.2e}, "
        f"min cosine {cosine.min():.6f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
