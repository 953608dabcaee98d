"""Embed queries or a corpus into the files of :mod:`densetune.retrieval.embeddings`, and the ``densetune encode`` command.

Queries are embedded at once into ``query.npy`` + ``query.ids`` + ``query.meta.json``. A corpus is embedded
in shards of ``shard_size`` documents into ``doc.npy`` + ``doc.ids`` + ``doc.meta.json``: an interrupted
encode re-run with the same settings continues after the last complete shard, and a finished one does
nothing (:mod:`densetune.retrieval.shards`). With ``--dtype int8|binary`` the shards stay float32 and the
merge writes compact codes (:mod:`densetune.retrieval.quantize`), so resumption and the equality of one and
many processes are the float encode's. Under torchrun every rank encodes its share of the shards.

Inputs are read by :mod:`densetune.data.inputs` (queries: BEIR ``queries.jsonl``, NeMo query file, or a BEIR
directory with ``--split``; corpus: NeMo document file or anything ``load_corpus`` reads); the model is
loaded by :func:`densetune.models.loaders.load_encoder`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from densetune import distributed
from densetune.data.inputs import DocSource, open_corpus, read_queries
from densetune.errors import DataError, DensetuneError
from densetune.models.loaders import load_encoder
from densetune.models.matryoshka import add_dim_argument, single_dim
from densetune.paths import add_overwrite_argument, check_output
from densetune.precision import INFERENCE_ATTR, add_precision_argument
from densetune.retrieval import quantize, shards
from densetune.retrieval.embeddings import DTYPES, QUERY, lines_digest, read_meta, write_embeddings

DEFAULT_SHARD_SIZE = 100_000


@runtime_checkable
class Encoder(Protocol):
    """Anything that embeds texts: :class:`densetune.models.biencoder.BiEncoder`, or a test stub.

    ``encode_texts`` returns a [len(texts), H] tensor (or array) in input order; prefixes, truncation and
    normalisation are the encoder's business.
    """

    def encode_texts(
        self, texts: Sequence[str], *, is_query: bool, batch_size: int = 64, **kwargs: Any
    ) -> Any: ...


# ---------------------------------------------------------------------------------------------------------
# Encoding


def embed_texts(
    encoder: Encoder,
    texts: Sequence[str],
    *,
    is_query: bool,
    batch_size: int = 64,
    max_length: int | None = None,
    show_progress: bool = False,
) -> np.ndarray:
    """``encoder.encode_texts`` as a float32 numpy array [len(texts), H]."""
    kwargs: dict[str, Any] = {"is_query": is_query, "batch_size": batch_size, "show_progress": show_progress}
    if max_length is not None:
        kwargs["max_length"] = max_length
    out = encoder.encode_texts(list(texts), **kwargs)
    if isinstance(out, torch.Tensor):
        out = out.detach().float().cpu().numpy()
    out = np.asarray(out, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(texts):
        raise DensetuneError(f"encoder returned shape {out.shape} for {len(texts)} texts; expected [n, dim]")
    return out


def encoder_meta(encoder: Any, model: str = "", max_length: int | None = None) -> dict[str, Any]:
    """What identifies an encoding: model path, max length, whether the encoder normalises, and the
    arithmetic its forwards run in (bf16 and fp32 embeddings are not mixed in one resumed encode)."""
    config = getattr(encoder, "config", None)
    precision = getattr(
        encoder, INFERENCE_ATTR, None
    )  # autocast; a model loaded for inference has bf16 weights
    params = encoder.parameters() if hasattr(encoder, "parameters") else iter(())
    weights = next(iter(params), None)
    bf16 = (
        precision.bf16 if precision is not None else weights is not None and weights.dtype == torch.bfloat16
    )
    return {
        "model": str(model),
        "max_length": max_length,
        "normalized": bool(getattr(config, "normalize", False)),
        "precision": "bf16" if bf16 else "fp32",
        # a Matryoshka cut (--dim) gives other embeddings; None (whole) equals an earlier meta without the key
        "truncate_dim": getattr(encoder, "truncate_dim", None),
    }


def encode_queries(
    encoder: Encoder,
    ids: Sequence[str],
    texts: Sequence[str],
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    batch_size: int = 64,
    max_length: int | None = None,
    meta: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> Path:
    """Embed queries and write ``query.npy`` + ``query.ids`` + ``query.meta.json`` to ``out_dir``.

    Under a compact ``dtype`` (int8, binary: the corpus' codes) queries stay float32: search scores the
    codes with the float query (binary: its sign bits), and rescoring needs it."""
    _check_dtype(dtype)
    dtype = dtype if dtype in DTYPES else "float32"
    emb = embed_texts(
        encoder,
        texts,
        is_query=True,
        batch_size=batch_size,
        max_length=max_length,
        show_progress=show_progress,
    )
    return write_embeddings(out_dir, QUERY, ids, emb, dtype=dtype, meta=meta)


@dataclass
class CorpusEncodeResult:
    """Outcome of :func:`encode_corpus`.

    Attributes:
        complete: all shards encoded and merged into doc.npy / doc.ids.
        shards_total: shards the corpus needs.
        shards_done: shards on disk (all of them when complete).
        shards_encoded: shards encoded by this call (0 when everything was already there).
        rows: documents in the corpus.
    """

    complete: bool
    shards_total: int
    shards_done: int
    shards_encoded: int
    rows: int


def _check_dtype(dtype: str, rescore_dtype: str | None = None) -> None:
    if dtype not in quantize.STORAGE_DTYPES:
        raise DensetuneError(f"unknown dtype {dtype!r}; expected one of {', '.join(quantize.STORAGE_DTYPES)}")
    if rescore_dtype is not None and (
        dtype not in quantize.COMPACT
        or rescore_dtype not in quantize.RESCORE_DTYPES
        or rescore_dtype == dtype
    ):
        raise DensetuneError(
            f"--rescore-dtype {rescore_dtype} with --dtype {dtype}: a rescoring store is int8 or float beside "
            "int8 or binary codes, finer than the codes"
        )


def encode_corpus(
    encoder: Encoder,
    source: DocSource,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    rescore_dtype: str | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_shards: int | None = None,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> CorpusEncodeResult:
    """Embed a corpus into ``doc.npy`` + ``doc.ids``, shard by shard, resumably.

    Args:
        encoder: see :class:`Encoder`.
        source: the documents (:func:`open_corpus`, or :meth:`DocSource.from_lists`).
        out_dir: output directory.
        dtype: storage dtype, ``float32``, ``float16``, or compact codes ``int8`` | ``binary``
            (:mod:`densetune.retrieval.quantize`; shards stay float32 and are quantized at the merge).
        rescore_dtype: with compact codes: also write ``doc.rescore.npy`` in ``int8`` | ``float16`` |
            ``float32``, the finer vectors search rescores candidates with.
        batch_size: texts per forward pass.
        max_length: token limit (None: the encoder's default).
        shard_size: documents per shard.
        max_shards: encode at most this many new shards in this call, then stop without merging (a
            time-bounded job, or a test of resumption); None: run to the end.
        meta: identifying settings (model, max length...) stored in ``doc.meta.json``; a re-run must give
            the same ones to resume.
        overwrite: discard earlier outputs and shards in ``out_dir`` instead of resuming.
        show_progress: tqdm bars.

    Returns:
        A :class:`CorpusEncodeResult`.

    Raises:
        DataError: ``out_dir`` holds outputs of a different encode (other settings or corpus) and
            ``overwrite`` is False; or a shard on disk does not match the corpus.
    """
    _check_dtype(dtype, rescore_dtype)
    if shard_size < 1:
        raise DensetuneError(f"shard_size must be >= 1, got {shard_size}")
    rank, world = distributed.rank(), distributed.world_size()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(source)
    if n == 0:
        raise DataError("corpus has no documents", source.path or None)
    settings = {
        **(meta or {}),
        "dtype": dtype,
        "shard_size": shard_size,
        "rows": n,
        "ids_sha1": lines_digest(source.ids),
    }
    if rescore_dtype is not None:
        settings["rescore_dtype"] = rescore_dtype
    n_shards = (n + shard_size - 1) // shard_size
    # Every rank reads the state and checks it (so a refusal ends every rank alike); rank 0 alone writes.
    finished = shards.check_state(out, settings, overwrite)
    distributed.barrier()  # every rank has read the state before rank 0 changes it
    if finished:
        if rank == 0:
            shards.remove_shards(out)
        distributed.barrier()
        return CorpusEncodeResult(True, n_shards, n_shards, 0, n)
    if rank == 0:
        shards.start(out, settings, overwrite)
    distributed.barrier()

    # Shard k belongs to rank k % world.
    mine = [k for k in range(rank, n_shards, world)]
    todo = shards.pending(out, mine, source.ids, shard_size)
    if max_shards is not None:
        todo = todo[:max_shards]
    bar = None
    if show_progress and rank == 0:
        from tqdm.auto import tqdm

        share = sum(min(shard_size, n - k * shard_size) for k in mine)
        done_rows = share - sum(min(shard_size, n - k * shard_size) for k in todo)
        label = "encode corpus" if world == 1 else f"encode corpus (rank 0 of {world})"
        bar = tqdm(total=share, initial=done_rows, desc=label, unit="doc")
    encoded = 0
    try:
        for k in todo:
            start, stop = k * shard_size, min((k + 1) * shard_size, n)
            emb = embed_texts(
                encoder,
                source.texts(start, stop),
                is_query=False,
                batch_size=batch_size,
                max_length=max_length,
                show_progress=show_progress and n_shards == 1,
            )
            shards.write_shard(out, k, source.ids[start:stop], emb.astype(DTYPES.get(dtype, np.float32)))
            encoded += 1
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()
    encoded = sum(distributed.gather_objects(encoded, world))
    distributed.barrier()  # every rank's shards are on disk
    done = shards.count_done(out, n_shards)
    if done < n_shards:
        return CorpusEncodeResult(False, n_shards, done, encoded, n)
    if rank == 0:
        shards.finish(out, n_shards, n, dtype, rescore_dtype, settings)
    distributed.barrier()
    return CorpusEncodeResult(True, n_shards, n_shards, encoded, n)


# ---------------------------------------------------------------------------------------------------------
# densetune encode


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="model directory (densetune, sentence-transformers or HF)"
    )
    parser.add_argument("--queries", help="queries.jsonl, NeMo query file, or BEIR directory (with --split)")
    parser.add_argument(
        "--corpus", help="corpus: BEIR directory, NeMo corpus dir, .jsonl/.parquet, NeMo doc file"
    )
    parser.add_argument(
        "--split", default="test", help="qrels split selecting the queries of a BEIR dir (default: test)"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--dtype",
        choices=quantize.STORAGE_DTYPES,
        default="float32",
        help="storage dtype (default: float32); int8 | binary: compact corpus codes, queries stay float32",
    )
    parser.add_argument(
        "--rescore-dtype",
        choices=quantize.RESCORE_DTYPES,
        default=None,
        help="with --dtype int8|binary: also write doc.rescore.npy, the vectors search rescores with",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: 64)")
    parser.add_argument("--max-length", type=int, default=None, help="token limit (default: the model's)")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help=f"documents per shard (default: {DEFAULT_SHARD_SIZE})",
    )
    parser.add_argument(
        "--max-shards", type=int, default=None, help="stop after encoding this many new shards"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_precision_argument(parser)
    add_dim_argument(parser)
    add_overwrite_argument(
        parser, "query embeddings in --out; corpus: discard earlier shards instead of resuming"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="corpus cache (default: $DENSETUNE_CACHE or ~/.cache/densetune)"
    )


def _queries_key(args: argparse.Namespace, queries: tuple[list[str], list[str]]) -> str:
    """What identifies a query encoding: the model folder, token limit, dtype, ids and texts."""
    what = [str(Path(args.model).resolve()), str(args.max_length), args.dtype, args.precision]
    what += [f"dim={args.dim}"] if args.dim else []
    what += [*queries[0], *queries[1]]
    return lines_digest(what)


def _done(out: str | Path, key: str) -> bool:
    """Whether ``out`` already holds the query encoding ``key`` names (a re-run of the same command, as
    when resuming a corpus encode, is not an overwrite: there is nothing to replace)."""
    return (Path(out) / f"{QUERY}.npy").is_file() and read_meta(out, QUERY).get("inputs") == key


def main(args: argparse.Namespace) -> int:
    if not args.queries and not args.corpus:
        raise DensetuneError("nothing to encode: give --queries and/or --corpus")
    if args.batch_size < 1:
        raise DensetuneError(f"--batch-size must be >= 1, got {args.batch_size}")
    _check_dtype(args.dtype, args.rescore_dtype)
    dim = single_dim(args.dim)
    # read inputs before loading the model, so bad input fails fast
    queries = read_queries(args.queries, args.split) if args.queries else None
    source = open_corpus(args.corpus, cache_dir=args.cache_dir) if args.corpus else None
    query_key = _queries_key(args, queries) if queries is not None else None
    if queries is not None and _done(args.out, query_key):
        print(f"{args.out}/{QUERY}.npy already holds these {len(queries[0])} queries; nothing to do")
        queries = None
    elif queries is not None:
        check_output(Path(args.out) / f"{QUERY}.npy", args.overwrite)
    if queries is None and source is None:
        return 0
    # Under torchrun every rank encodes its share of the corpus shards and rank 0 merges them.
    rank, world, device = distributed.join(args.device)
    encoder = load_encoder(args.model, device=device, precision=args.precision, dim=dim)
    meta = encoder_meta(encoder, str(Path(args.model).resolve()), args.max_length)
    if source is not None:
        start = time.perf_counter()
        result = encode_corpus(
            encoder,
            source,
            args.out,
            dtype=args.dtype,
            rescore_dtype=args.rescore_dtype,
            batch_size=args.batch_size,
            max_length=args.max_length,
            shard_size=args.shard_size,
            max_shards=args.max_shards,
            meta=meta,
            overwrite=args.overwrite,
        )
        elapsed = time.perf_counter() - start
        if result.complete and result.shards_encoded == 0:
            message = f"{args.out}/doc.npy already holds these {result.rows} documents; nothing to do"
        elif result.complete:
            message = f"encoded {result.rows} documents in {elapsed:.1f}s -> {args.out}/doc.npy"
        else:
            message = (
                f"encoded {result.shards_encoded} shards in {elapsed:.1f}s; {result.shards_done}/{result.shards_total} "
                "done: re-run the same command to continue"
            )
        if rank == 0:
            print(message + (f" ({world} processes)" if world > 1 else ""))
    if queries is not None and rank == 0:
        start = time.perf_counter()
        encode_queries(
            encoder,
            *queries,
            args.out,
            dtype=args.dtype,
            batch_size=args.batch_size,
            max_length=args.max_length,
            meta={**meta, "inputs": query_key},
        )
        print(
            f"encoded {len(queries[0])} queries in {time.perf_counter() - start:.1f}s -> {args.out}/query.npy"
        )
    return 0
