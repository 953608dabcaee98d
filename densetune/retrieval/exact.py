"""Exact top-k by inner product over embeddings, in bounded memory (:func:`exact_search`).

The corpus is read once, chunk by chunk (a memory-mapped float16 or float32 ``doc.npy`` larger than RAM
works), each chunk is scored against blocks of queries and merged into a running top-k per query. Memory is
``query_block x doc_chunk`` scores plus the running ``[queries, depth]`` result, whatever the corpus size.

Two things keep the arithmetic to what it must be:

- Group-max selection. Taking the top k of a ``[block, chunk]`` score matrix with ``torch.topk`` costs about
  half as much as the product itself; here the chunk's columns are cut into groups of :data:`GROUP`, each
  group's maximum taken in one vectorised pass, and only the k groups with the highest maxima are searched
  (every one of the k best scores lies in one of them). The result is the same.
- bf16 candidates (``precision`` ``auto`` on a CPU that computes bf16 natively, or ``bf16``): the products
  that pick candidates run in bf16 (about 3x the float32 rate with AMX), keeping ``2k + 16`` per query; the
  candidates are then rescored in float32 and ordered by those scores. A rounding bound proves, per query,
  that no document outside the candidates can reach the k-th float32 score (:func:`_certified`); a query
  without that proof (scores too close together) is searched again in float32. So the result is the float32
  search's, whatever the precision; only the time changes. Float32 everywhere else (``fp32``, GPUs, CPUs
  without native bf16).

Scores are float32 inner products (cosine with ``normalize=True``), computed with autocast off, so a caller's
bf16 autocast (the trainer evaluates under it) does not reach them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from densetune.errors import DensetuneError
from densetune.hostmem import reuse_freed_memory
from densetune.retrieval.topk import sort_rows

GROUP = 16  # columns per group in group-max selection
_BF16_UNIT = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
_F32_UNIT = 2.0**-24
_RESCORE_BLOCK = 256  # queries whose candidates are gathered and rescored together
_EXTRA = 64  # bf16 candidates kept beyond k: room for the rounding bound (module docstring)


def as_float32(array: np.ndarray | torch.Tensor) -> np.ndarray:
    """A float32 numpy array torch can wrap (memmaps and read-only views are copied)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().float().numpy()
    out = np.ascontiguousarray(array, dtype=np.float32)
    # read-only memmaps come through as views; torch wants writable memory
    return out if out.flags.writeable else out.copy()


def check_shapes(query_emb, doc_emb, top_k: int) -> None:
    """2-d embeddings of one width and ``top_k >= 1``, or a DensetuneError saying which is wrong."""
    if query_emb.ndim != 2 or doc_emb.ndim != 2:
        raise DensetuneError(
            f"embeddings must be 2-d [rows, dim]; got queries {tuple(query_emb.shape)}, docs {tuple(doc_emb.shape)}"
        )
    if query_emb.shape[1] != doc_emb.shape[1]:
        raise DensetuneError(
            f"query and document embeddings differ in dimension ({query_emb.shape[1]} vs {doc_emb.shape[1]}); "
            "were they encoded by the same model?"
        )
    if top_k < 1:
        raise DensetuneError(f"top_k must be >= 1, got {top_k}")


def default_device(device: str | None) -> torch.device:
    """``device``, or cuda when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bf16_candidates(precision: str, device: torch.device) -> bool:
    """Whether :func:`exact_search` picks candidates with bf16 products: ``bf16``, or ``auto`` where the CPU
    computes bf16 natively. CPU only: there torch's bf16 products accumulate in float32, which the rounding
    bound assumes (cuBLAS may reduce in bf16; a GPU's float32 products are fast enough)."""
    from densetune.precision import PRECISIONS, native_bf16

    if precision not in PRECISIONS:
        raise DensetuneError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if device.type != "cpu" or precision == "fp32":
        return False
    return precision == "bf16" or native_bf16(device)[0]


def block_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(scores, k, dim=1)`` (values and column indices, values descending), by group-max
    selection when the row is long enough to gain from it (module docstring)."""
    b, n = scores.shape
    k = min(k, n)
    groups = n // GROUP
    if groups < 4 * k:
        return torch.topk(scores, k, dim=1)
    # group j holds columns j, j + groups, j + 2 * groups, ...: the maxima are an elementwise max of GROUP
    # contiguous slices; the n % GROUP columns left over are candidates of their own
    maxima = scores[:, : groups * GROUP].view(b, GROUP, groups).amax(dim=1)
    best = torch.topk(maxima, k, dim=1).indices  # [b, k]
    offsets = torch.arange(GROUP, device=scores.device) * groups
    cols = (best[:, :, None] + offsets).reshape(b, k * GROUP)
    rest = n - groups * GROUP
    if rest:
        tail = torch.arange(groups * GROUP, n, device=scores.device).expand(b, rest)
        cols = torch.cat([cols, tail], dim=1)
    values, pos = torch.topk(torch.gather(scores, 1, cols), k, dim=1)
    return values, torch.gather(cols, 1, pos)


def _chunked_topk(
    queries: torch.Tensor,
    doc_emb,
    depth: int,
    *,
    normalize: bool,
    query_block: int,
    doc_chunk: int,
    bf16: bool,
    show_progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The running top-``depth`` of ``queries`` (float32, or bf16 when ``bf16``) against the corpus, read in
    chunks. Returns values [Q, depth] (float32), rows [Q, depth] (int64, -1 unfilled) and, for bf16, the
    corpus' largest float32 norm, bf16 norm and bf16 rounding-error norm (the bound's terms)."""
    dev = queries.device
    n_queries, n_docs = queries.shape[0], doc_emb.shape[0]
    best_values = torch.full((n_queries, depth), -math.inf, dtype=torch.float32, device=dev)
    best_rows = torch.full((n_queries, depth), -1, dtype=torch.int64, device=dev)
    norms = {"doc": 0.0, "doc_bf16": 0.0, "doc_error": 0.0}
    if bf16:
        doc_chunk *= 2  # bf16 scores take half the memory: twice the documents in the same space
    starts = range(0, n_docs, doc_chunk)
    if show_progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="search", unit="chunk")
    for start in starts:
        chunk = torch.as_tensor(as_float32(doc_emb[start : start + doc_chunk])).to(dev)
        if normalize:
            chunk = torch.nn.functional.normalize(chunk, dim=-1)
        if bf16:
            low = chunk.to(torch.bfloat16)
            norms["doc"] = max(norms["doc"], float(chunk.norm(dim=1).max()))
            norms["doc_bf16"] = max(norms["doc_bf16"], float(low.float().norm(dim=1).max()))
            norms["doc_error"] = max(norms["doc_error"], float((low.float() - chunk).norm(dim=1).max()))
            chunk = low
        kc = min(depth, chunk.shape[0])
        for qs in range(0, n_queries, query_block):
            qe = min(qs + query_block, n_queries)
            scores = queries[qs:qe] @ chunk.T
            top_v, top_c = block_topk(scores, kc) if bf16 else torch.topk(scores, kc, dim=1)
            top_v, top_c = top_v.float(), top_c + start
            if start == 0 and kc == depth:  # nothing to merge with yet
                best_values[qs:qe], best_rows[qs:qe] = top_v, top_c
                continue
            merged_v = torch.cat([best_values[qs:qe], top_v], dim=1)
            merged_r = torch.cat([best_rows[qs:qe], top_c], dim=1)
            keep_v, pos = torch.topk(merged_v, depth, dim=1)
            best_values[qs:qe] = keep_v
            best_rows[qs:qe] = torch.gather(merged_r, 1, pos)
    return best_values, best_rows, norms


def _rescore(queries: torch.Tensor, doc_emb, rows: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Float32 scores [Q, depth] of each query against its candidate rows (read from ``doc_emb``)."""
    out = torch.empty(rows.shape, dtype=torch.float32, device=queries.device)
    for qs in range(0, rows.shape[0], _RESCORE_BLOCK):
        block = rows[qs : qs + _RESCORE_BLOCK]
        flat = block.reshape(-1).cpu().numpy()
        docs = torch.as_tensor(as_float32(doc_emb[flat])).to(queries.device).view(*block.shape, -1)
        if normalize:
            docs = torch.nn.functional.normalize(docs, dim=-1)
        out[qs : qs + _RESCORE_BLOCK] = torch.bmm(docs, queries[qs : qs + _RESCORE_BLOCK, :, None])[..., 0]
    return out


def _certified(
    queries: torch.Tensor, low_values: torch.Tensor, kth: torch.Tensor, norms: dict[str, float]
) -> torch.Tensor:
    """[Q] bool: no document outside a query's bf16 candidates can score >= its k-th float32 score.

    A document x left out has a bf16 score ``o <= c``, the lowest candidate's. Its float32 score s is at most
    ``o + u/(1-u)|o|`` (the product's rounding to bf16, u = 2^-8) plus ``|q~.d~ - q.d|`` (the inputs'
    rounding: ``|q~ - q| ||d|| + ||q~|| |d~ - d|``, Cauchy-Schwarz, with the corpus' largest norms) plus the
    float32 accumulation of both products (``H 2^-24 ||q|| ||d||`` each). The bound rises with ``o``, so
    ``bound(c) < kth`` proves the query's top k exact.
    """
    low = queries.to(torch.bfloat16).float()
    q_norm, q_low = queries.norm(dim=1), low.norm(dim=1)
    q_error = (low - queries).norm(dim=1)
    dim = queries.shape[1]
    gamma = dim * _F32_UNIT / (1 - dim * _F32_UNIT)
    c = low_values[:, -1]
    slack = (
        q_error * norms["doc"]
        + q_low * norms["doc_error"]
        + gamma * (q_low * norms["doc_bf16"] + q_norm * norms["doc"])
        + 1e-6 * (q_norm * norms["doc"] + 1e-30)  # margin for what the bound leaves out (subnormals)
    )
    bound = c + _BF16_UNIT / (1 - _BF16_UNIT) * c.abs() + slack
    return bound < kth


def exact_search(
    query_emb: np.ndarray | torch.Tensor,
    doc_emb: np.ndarray | torch.Tensor,
    top_k: int,
    *,
    normalize: bool = False,
    query_block: int = 1024,
    doc_chunk: int = 32768,
    device: str | None = None,
    show_progress: bool = False,
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, in bounded memory.

    Args:
        query_emb: [Q, H] queries (numpy, memmap or tensor).
        doc_emb: [N, H] documents (numpy, ``np.load(..., mmap_mode="r")`` or tensor).
        top_k: results per query; ``min(top_k, N)`` are returned.
        normalize: L2-normalise both sides (cosine similarity).
        query_block: queries scored together; memory is ``query_block * doc_chunk * 4`` bytes.
        doc_chunk: documents scored together.
        device: torch device; None: cuda when available, else cpu.
        show_progress: tqdm bar over corpus chunks.
        precision: ``auto`` | ``bf16`` | ``fp32``: the products that pick candidates (module docstring); the
            result is float32 search's in every case.

    Returns:
        ``(scores, indices)``: float32 [Q, k] and int64 [Q, k] (rows of ``doc_emb``), each row by descending
        score, equal scores by ascending row. Which of several documents tied at the k-th score is kept is
        unspecified.
    """
    check_shapes(query_emb, doc_emb, top_k)
    dev = default_device(device)
    n_docs = doc_emb.shape[0]
    k = min(top_k, n_docs)
    bf16 = bf16_candidates(precision, dev)
    queries = torch.as_tensor(as_float32(query_emb)).to(dev)
    if normalize:
        queries = torch.nn.functional.normalize(queries, dim=-1)
    depth = min(n_docs, k + _EXTRA) if bf16 else k
    settings = {"normalize": normalize, "query_block": query_block, "doc_chunk": doc_chunk}
    # on a CPU each block's scores are host memory: reuse the last block's pages (densetune/hostmem.py)
    host = reuse_freed_memory(dev.type == "cpu")
    with torch.inference_mode(), torch.autocast(dev.type, enabled=False), host:
        low = queries.to(torch.bfloat16) if bf16 else queries
        values, rows, norms = _chunked_topk(
            low, doc_emb, depth, bf16=bf16, show_progress=show_progress, **settings
        )
        if bf16:
            values, rows = _exact_from_candidates(queries, doc_emb, k, values, rows, norms, settings)
    return sort_rows(values.cpu().numpy(), rows.cpu().numpy())


def _exact_from_candidates(queries, doc_emb, k, low_values, rows, norms, settings):
    """Rescore the bf16 candidates in float32, keep the k best; queries the bound cannot prove are searched
    again in float32."""
    scores = _rescore(queries, doc_emb, rows, settings["normalize"])
    values, pos = torch.topk(scores, k, dim=1)
    rows = torch.gather(rows, 1, pos)
    if low_values.shape[1] < doc_emb.shape[0]:  # else every document was a candidate
        redo = torch.nonzero(~_certified(queries, low_values, values[:, -1], norms))[:, 0]
        if len(redo):
            again_v, again_r, _ = _chunked_topk(
                queries[redo], doc_emb, k, bf16=False, show_progress=False, **settings
            )
            values[redo], rows[redo] = again_v, again_r
    return values, rows
