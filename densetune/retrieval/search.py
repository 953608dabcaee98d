"""Top-k search over embeddings (exact chunked matrix products, or faiss), and ``densetune search``.

Exact search (:mod:`densetune.retrieval.exact`) never holds the full ``[queries, corpus]`` score matrix: the
corpus is read once, chunk by chunk (so a memory-mapped ``doc.npy`` larger than RAM works), each chunk is
scored against blocks of queries and merged into a running top-k per query. Memory is ``query_block x
doc_chunk`` scores plus the running ``[queries, k]`` result, whatever the corpus size. Scores are inner products in float32 (cosine when
``normalize=True`` or when the encoder normalised its embeddings, as densetune's bi-encoders do by default).

For very large corpora, faiss indexes trade exactness for speed: ``flat`` (exact, faiss' BLAS),
``ivf`` (inverted lists, ``nlist`` cells, ``nprobe`` probed) and ``hnsw`` (graph, ``hnsw_m`` links,
``ef_search``).

Compact corpora (``densetune encode --dtype int8|binary``, :mod:`densetune.retrieval.quantize`) are searched
by :func:`compact_search`: int8 by the float query's dot products with the codes (scaled by the corpus' ranges),
binary by Hamming distance; the top ``top_k * rescore_multiplier`` candidates are then rescored with the
float query against finer vectors.

Command: ``densetune search --queries DIR --corpus DIR --top-k 100 --out RUN [--index exact|flat|ivf|hnsw]``
reads the outputs of ``densetune encode`` (``query.npy``/``query.ids`` and ``doc.npy``/``doc.ids``) and writes
a TREC run.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from densetune.errors import DensetuneError
from densetune.models.matryoshka import add_dim_argument, single_dim, truncate
from densetune.paths import add_overwrite_argument, check_output
from densetune.retrieval import bm25, quantize
from densetune.retrieval.exact import as_float32 as _as_float32
from densetune.retrieval.exact import check_shapes as _check_shapes
from densetune.retrieval.exact import exact_search
from densetune.retrieval.topk import sort_rows, to_run

INDEX_TYPES = ("exact", "flat", "ivf", "hnsw")


@dataclass
class SearchConfig:
    """How to search; the one source of search defaults (the CLI reads them from here).

    Attributes:
        index: ``exact`` (chunked torch matmul, default), or a faiss index ``flat`` | ``ivf`` | ``hnsw``.
        normalize: L2-normalise queries and documents first (cosine similarity).
        query_block: queries scored together (exact search).
        doc_chunk: documents read and scored together (exact search; faiss: added together).
        device: torch device for exact search (``"cpu"``, ``"cuda"``); None: cuda when available.
        nlist: IVF cells; None: ``4 * sqrt(N)`` clipped to [1, N // 39].
        nprobe: IVF cells probed per query.
        hnsw_m: HNSW links per node.
        ef_construction / ef_search: HNSW beam widths when building / searching.
        seed: seed of the IVF k-means.
        rescore_multiplier: compact corpora: candidates per query the codes pick, as a multiple of top_k,
            for the float query to rescore; 0: the codes' own scores, no rescoring.
        precision: ``auto`` | ``bf16`` | ``fp32``: the products exact search picks candidates with
            (:mod:`densetune.retrieval.exact`: bf16 candidates are rescored in float32, so the result is the
            same; ``auto`` uses bf16 where the CPU computes it natively).
    """

    index: str = "exact"
    normalize: bool = False
    query_block: int = 1024
    doc_chunk: int = 32768
    device: str | None = None
    nlist: int | None = None
    nprobe: int = 32
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 256
    seed: int = 42
    rescore_multiplier: int = quantize.DEFAULT_RESCORE_MULTIPLIER
    precision: str = "auto"

    def __post_init__(self):
        if self.index not in INDEX_TYPES:
            raise DensetuneError(f"unknown index {self.index!r}; expected one of {', '.join(INDEX_TYPES)}")
        for name in ("query_block", "doc_chunk", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if int(getattr(self, name)) < 1:
                raise DensetuneError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.nlist is not None and self.nlist < 1:
            raise DensetuneError(f"nlist must be >= 1, got {self.nlist}")
        if self.rescore_multiplier < 0:
            raise DensetuneError(f"rescore_multiplier must be >= 0, got {self.rescore_multiplier}")


def brute_force_search(
    query_emb: np.ndarray, doc_emb: np.ndarray, top_k: int, *, normalize: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Reference: the full [Q, N] score matrix in float64, sorted. Only for tests and small inputs."""
    q = np.asarray(query_emb, dtype=np.float64)
    d = np.asarray(doc_emb, dtype=np.float64)
    if normalize:
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    scores = q @ d.T
    k = min(top_k, d.shape[0])
    order = np.lexsort((np.broadcast_to(np.arange(d.shape[0]), scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1).astype(np.float32), order.astype(np.int64)


# ---------------------------------------------------------------------------------------------------------
# faiss


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        raise DensetuneError("faiss is not installed; pip install faiss-cpu, or use --index exact") from None
    return faiss


def build_faiss_index(doc_emb: np.ndarray | torch.Tensor, config: SearchConfig):
    """Build a faiss inner-product index over ``doc_emb`` (added in chunks, so a memmap works).

    Args:
        doc_emb: [N, H] documents.
        config: ``index`` in flat | ivf | hnsw and its parameters.

    Returns:
        The faiss index (rows are ``doc_emb`` rows).
    """
    faiss = _faiss()
    n, dim = doc_emb.shape
    metric = faiss.METRIC_INNER_PRODUCT
    if config.index == "flat":
        index = faiss.IndexFlatIP(dim)
    elif config.index == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, metric)
        index.hnsw.efConstruction = config.ef_construction
        index.hnsw.efSearch = config.ef_search
    elif config.index == "ivf":
        nlist = config.nlist or int(min(max(1, round(4 * math.sqrt(n))), max(1, n // 39)))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
        # k-means on a seeded sample of 64 points per cell (faiss wants 39-256)
        rng = np.random.default_rng(config.seed)
        n_train = min(n, nlist * 64)
        sample = np.sort(rng.choice(n, size=n_train, replace=False))
        train = _as_float32(doc_emb[sample])
        if config.normalize:
            faiss.normalize_L2(train)
        index.cp.seed = config.seed
        index.train(train)
        index.nprobe = min(config.nprobe, nlist)
    else:
        raise DensetuneError(f"unknown faiss index {config.index!r}; expected flat, ivf or hnsw")
    for start in range(0, n, config.doc_chunk):
        chunk = _as_float32(doc_emb[start : start + config.doc_chunk])
        if config.normalize:
            faiss.normalize_L2(chunk)
        index.add(chunk)
    return index


def faiss_search(
    query_emb: np.ndarray | torch.Tensor,
    doc_emb: np.ndarray | torch.Tensor,
    top_k: int,
    config: SearchConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k with a faiss index built by :func:`build_faiss_index`; same return as :func:`exact_search`.

    Approximate indexes may return fewer than k hits for a query: those slots hold index -1 and score -inf.
    """
    faiss = _faiss()
    _check_shapes(query_emb, doc_emb, top_k)
    index = build_faiss_index(doc_emb, config)
    queries = _as_float32(query_emb).copy()
    if config.normalize:
        faiss.normalize_L2(queries)
    k = min(top_k, doc_emb.shape[0])
    scores, indices = index.search(queries, k)
    scores = np.where(indices < 0, -np.inf, scores).astype(np.float32)
    return sort_rows(scores, indices.astype(np.int64))


# ---------------------------------------------------------------------------------------------------------
# compact corpora


def compact_search(
    query_emb: np.ndarray | torch.Tensor,
    corpus: quantize.CompactCorpus,
    top_k: int,
    config: SearchConfig | None = None,
    *,
    show_progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k over int8 or binary codes, then float rescoring; same return as :func:`exact_search`.

    int8: the float query against the dequantized codes, ``query . (min + (code + 128) * step)``, computed
    as one chunked float product ``(query * step) . code`` plus a per-query constant (the codes are never
    decoded: the int8 array is all the memory the corpus takes); binary: Hamming distance between sign bits,
    scored ``dim - 2 * distance`` (the dot product of the +-1 vectors). The best
    ``top_k * config.rescore_multiplier`` then get ``query . vector`` with the float query and the corpus'
    rescoring vectors (:meth:`densetune.retrieval.quantize.CompactCorpus.vectors`: the rescoring store, or
    binary codes as +-1; int8 codes without a finer store are final as scored).
    """
    config = config or SearchConfig()
    if config.index != "exact":
        raise DensetuneError(
            f"--index {config.index} searches float embeddings; {corpus.dtype} codes are searched exactly "
            "(Hamming or int8 products) and rescored: drop --index"
        )
    queries = _as_float32(query_emb)
    if queries.ndim != 2 or queries.shape[1] != corpus.dim:
        raise DensetuneError(
            f"queries of shape {tuple(queries.shape)} for {corpus.dtype} codes of dim {corpus.dim}; "
            "were they encoded by the same model?"
        )
    if top_k < 1:
        raise DensetuneError(f"top_k must be >= 1, got {top_k}")
    if config.normalize:
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    final = config.rescore_multiplier == 0 or not corpus.rescores
    depth = top_k if final else top_k * config.rescore_multiplier
    if corpus.dtype == "binary":
        dist, rows = quantize.hamming_search(quantize.quantize_binary(queries), corpus.codes, depth)
        scores = (corpus.dim - 2 * dist).astype(np.float32)
    else:
        lo, step = corpus.ranges[0], quantize.int8_steps(corpus.ranges)
        scaled = (queries * step).astype(np.float32)
        scores, rows = exact_search(
            scaled,
            corpus.codes,
            depth,
            query_block=config.query_block,
            doc_chunk=config.doc_chunk,
            device=config.device,
            show_progress=show_progress,
        )
        scores += (queries @ lo + 128 * scaled.sum(1))[:, None]
    if final:
        return scores, rows
    vectors = corpus.vectors
    if config.normalize:

        def vectors(rows_: np.ndarray) -> np.ndarray:
            v = corpus.vectors(rows_)
            return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    return quantize.rescore(queries, rows, vectors, top_k)


def search(
    query_emb: np.ndarray | torch.Tensor,
    doc_emb: np.ndarray | torch.Tensor | quantize.CompactCorpus,
    top_k: int,
    config: SearchConfig | None = None,
    *,
    show_progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k documents per query with the method ``config.index`` names (default exact); compact codes
    (a :class:`densetune.retrieval.quantize.CompactCorpus`) through :func:`compact_search`.

    Returns:
        ``(scores [Q, k] float32, indices [Q, k] int64)``, rows by descending score; index -1 marks an
        empty slot (only approximate indexes leave any).
    """
    config = config or SearchConfig()
    if isinstance(doc_emb, quantize.CompactCorpus):
        return compact_search(query_emb, doc_emb, top_k, config, show_progress=show_progress)
    if config.index == "exact":
        return exact_search(
            query_emb,
            doc_emb,
            top_k,
            normalize=config.normalize,
            query_block=config.query_block,
            doc_chunk=config.doc_chunk,
            device=config.device,
            show_progress=show_progress,
            precision=config.precision,
        )
    return faiss_search(query_emb, doc_emb, top_k, config)


def search_run(
    query_ids: Sequence[str],
    query_emb: np.ndarray | torch.Tensor,
    doc_ids: Sequence[str],
    doc_emb: np.ndarray | torch.Tensor,
    top_k: int = 100,
    config: SearchConfig | None = None,
    *,
    show_progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Search and return a run dict; ids must align with embedding rows."""
    if len(query_ids) != query_emb.shape[0] or len(doc_ids) != doc_emb.shape[0]:
        raise DensetuneError(
            f"ids and embeddings differ in length: {len(query_ids)} query ids for {query_emb.shape[0]} rows, "
            f"{len(doc_ids)} doc ids for {doc_emb.shape[0]} rows"
        )
    scores, indices = search(query_emb, doc_emb, top_k, config, show_progress=show_progress)
    return to_run(query_ids, doc_ids, scores, indices)


# ---------------------------------------------------------------------------------------------------------
# densetune search


def configure_parser(parser: argparse.ArgumentParser) -> None:
    d = SearchConfig()
    parser.add_argument(
        "--queries", required=True, help="directory with query.npy + query.ids (densetune encode)"
    )
    parser.add_argument("--corpus", required=True, help="directory with doc.npy + doc.ids (densetune encode)")
    # --bm25 [--k1 --b]: texts instead of embeddings (densetune/retrieval/bm25.py)
    bm25.add_arguments(parser)
    parser.add_argument("--split", default="test", help="qrels split of a BEIR --queries dir (--bm25 only)")
    parser.add_argument("--out", required=True, help="TREC run file to write")
    parser.add_argument("--top-k", type=int, default=100, help="documents per query (default: 100)")
    parser.add_argument(
        "--index", choices=INDEX_TYPES, default=d.index, help="search method (default: exact)"
    )
    parser.add_argument("--normalize", action="store_true", help="L2-normalise embeddings first (cosine)")
    add_dim_argument(parser)
    parser.add_argument(
        "--device", default=d.device, help="torch device for exact search (default: cuda if available)"
    )
    parser.add_argument(
        "--query-block", type=int, default=d.query_block, help="queries scored together (exact)"
    )
    parser.add_argument(
        "--doc-chunk", type=int, default=d.doc_chunk, help="documents scored together (exact)"
    )
    parser.add_argument("--nlist", type=int, default=d.nlist, help="IVF cells (default: 4*sqrt(N))")
    parser.add_argument(
        "--nprobe", type=int, default=d.nprobe, help=f"IVF cells probed (default: {d.nprobe})"
    )
    parser.add_argument(
        "--hnsw-m", type=int, default=d.hnsw_m, help=f"HNSW links per node (default: {d.hnsw_m})"
    )
    parser.add_argument(
        "--ef-search", type=int, default=d.ef_search, help=f"HNSW search beam (default: {d.ef_search})"
    )
    parser.add_argument(
        "--rescore-multiplier",
        type=int,
        default=d.rescore_multiplier,
        help="int8/binary corpora: rescore top-k x this many candidates with the float query; 0: no "
        f"rescoring (default: {d.rescore_multiplier})",
    )
    parser.add_argument("--tag", default="densetune", help="run tag (last column of the run file)")
    add_overwrite_argument(parser, "the --out run file")


def _normalized(path: str, kind: str) -> bool:
    """Whether ``densetune encode`` recorded normalised embeddings in ``path`` (a directory or its .npy)."""
    from pathlib import Path

    from densetune.retrieval.embeddings import read_meta

    folder = Path(path).parent if str(path).endswith(".npy") else Path(path)
    return bool(read_meta(folder, kind).get("normalized"))


def main(args: argparse.Namespace) -> int:
    if args.bm25 and args.dim:
        raise DensetuneError("--dim truncates embeddings; --bm25 searches texts")
    if args.bm25:
        return bm25.search_main(args)
    from densetune.data.trec import write_run
    from densetune.retrieval.embeddings import load_embeddings

    config = SearchConfig(
        index=args.index,
        normalize=args.normalize,
        query_block=args.query_block,
        doc_chunk=args.doc_chunk,
        device=args.device,
        nlist=args.nlist,
        nprobe=args.nprobe,
        hnsw_m=args.hnsw_m,
        ef_search=args.ef_search,
        rescore_multiplier=args.rescore_multiplier,
    )
    check_output(args.out, args.overwrite)
    query_ids, query_emb = load_embeddings(args.queries, "query")
    doc_ids, doc_emb = load_embeddings(args.corpus, "doc", compact=True)
    dim = single_dim(args.dim)
    if dim is not None:
        if isinstance(doc_emb, quantize.CompactCorpus):
            raise DensetuneError(
                f"--dim cuts float embeddings; {args.corpus} holds {doc_emb.dtype} codes: encode the corpus "
                "with --dim and --dtype together instead"
            )
        # a view of the (memory-mapped) arrays; the search renormalises chunk by chunk, in bounded memory,
        # when the encoder normalised (its .meta.json says so) or --normalize asks
        query_emb, doc_emb = truncate(query_emb, dim, False), truncate(doc_emb, dim, False)
        config.normalize = (
            config.normalize or _normalized(args.queries, "query") or _normalized(args.corpus, "doc")
        )
    start = time.perf_counter()
    run = search_run(query_ids, query_emb, doc_ids, doc_emb, args.top_k, config, show_progress=True)
    write_run(run, args.out, tag=args.tag)
    elapsed = time.perf_counter() - start
    how = config.index
    if isinstance(doc_emb, quantize.CompactCorpus):
        how = f"{doc_emb.dtype} codes" + (
            f", top {config.rescore_multiplier}x rescored with {doc_emb.rescore_dtype}"
            if config.rescore_multiplier and doc_emb.rescores
            else ""
        )
    print(
        f"searched {len(query_ids)} queries x {len(doc_ids)} documents ({how}) in {elapsed:.1f}s; "
        f"wrote top-{args.top_k} to {args.out}"
    )
    return 0
