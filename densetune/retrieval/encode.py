"""Embed queries or a corpus into plain files, NeMo's layout, and the ``densetune encode`` command.

Layout of an output directory (rows of each ``.npy`` aligned with the lines of its ``.ids``):

- ``query.npy`` [Q, H] + ``query.ids`` (one query id per line) + ``query.meta.json``
- ``doc.npy`` [N, H] + ``doc.ids`` + ``doc.meta.json``

``*.meta.json`` records what produced the embeddings (model, max length, dtype, whether the model
normalises, rows, dim) so a later stage can check that queries and documents match.

Corpora are encoded in shards of ``shard_size`` documents, each written atomically (temporary file, then
rename) as ``doc.shard-00000.npy`` + ``.ids``. An interrupted encode re-run with the same settings continues
after the last complete shard; at the end the shards are merged (streamed, bounded memory) into
``doc.npy``/``doc.ids`` and removed. Re-running a finished encode with the same settings does nothing.
With ``--dtype int8|binary`` the shards stay float32 and the merge writes compact codes
(:mod:`densetune.retrieval.quantize`: ``doc.npy`` as int8 or packed bits, ``doc.int8-ranges.npy``,
optionally ``doc.rescore.npy``), so resumption and the equality of one and many processes are the float
encode's.

Inputs:

- queries: a BEIR ``queries.jsonl`` (``_id``, ``text``), a NeMo query file (``query_id``, ``query``), or a BEIR
  directory with ``--split`` (only the queries of that split's qrels, in ``queries.jsonl`` order).
- corpus: a NeMo document file (``doc_id``, ``pos_doc`` per line), or anything
  :func:`densetune.data.corpus.load_corpus` reads (BEIR directory, NeMo corpus directory, ``.jsonl`` /
  ``.parquet`` of ``id, text[, title]``). A document's text is ``title + " " + text`` when it has a title
  (:func:`densetune.data.corpus.doc_text`, the BEIR and sentence-transformers convention).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from densetune import distributed
from densetune.errors import DataError, DensetuneError
from densetune.models.matryoshka import add_dim_argument, single_dim
from densetune.paths import (
    add_overwrite_argument,
    atomic_path,
    check_input_file,
    check_output,
    write_text_atomic,
)
from densetune.precision import INFERENCE_ATTR, add_precision_argument, set_inference_precision
from densetune.retrieval import quantize

QUERY, DOC = "query", "doc"
DTYPES = quantize.FLOAT_DTYPES  # float storage; --dtype int8 | binary: compact corpus codes (quantize.py)
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
# Plain-file IO


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _write_ids(path: Path, ids: Sequence[str]) -> None:
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
    _write_ids(out / f"{kind}.ids", ids)
    _atomic_save_npy(out / f"{kind}.npy", np.ascontiguousarray(embeddings, dtype=DTYPES[dtype]))
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


# ---------------------------------------------------------------------------------------------------------
# Inputs


def _iter_json_lines(path: Path):
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"invalid JSON: {err.msg} (column {err.colno})", path, lineno) from None
            if not isinstance(obj, dict):
                raise DataError("expected a JSON object per line", path, lineno)
            yield lineno, obj


def _pick(obj: dict, keys: tuple[str, ...], path: Path, lineno: int, what: str) -> str:
    for key in keys:
        value = obj.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise DataError(f"expected {what} as a string, got {type(value).__name__}", path, lineno, key)
            return str(value)
    raise DataError(f"missing {what}; expected one of the fields {', '.join(keys)}", path, lineno)


def read_queries(path: str | Path, split: str = "test") -> tuple[list[str], list[str]]:
    """Query ids and texts from a query file or a BEIR directory.

    Args:
        path: BEIR ``queries.jsonl`` (``_id``, ``text``), NeMo query file (``query_id``, ``query``; also
            ``question``), or a BEIR directory.
        split: for a BEIR directory: keep only the queries in ``qrels/{split}.tsv``.

    Raises:
        DataError: missing file, bad line, missing field, duplicate id, or a qrels query with no text.
    """
    path = Path(path)
    if path.is_dir():
        from densetune.data.beir import is_beir_dir, qrels_path
        from densetune.data.trec import read_qrels

        if not is_beir_dir(path):
            raise DataError("not a BEIR directory; expected corpus.jsonl, queries.jsonl and qrels/", path)
        qrels = read_qrels(qrels_path(path, split))
        ids, texts = read_queries(path / "queries.jsonl")
        known = set(ids)
        missing = [q for q in qrels if q not in known]
        if missing:
            raise DataError(
                f"{len(missing)} qrels queries have no text in queries.jsonl (first: {missing[0]!r})",
                path / "qrels" / f"{split}.tsv",
            )
        keep = [(i, t) for i, t in zip(ids, texts) if i in qrels]
        return [i for i, _ in keep], [t for _, t in keep]
    check_input_file(path, "query file")
    ids: list[str] = []
    texts: list[str] = []
    seen: set[str] = set()
    for lineno, obj in _iter_json_lines(path):
        qid = _pick(obj, ("_id", "query_id", "id", "question_id"), path, lineno, "the query id")
        text = _pick(obj, ("text", "query", "question"), path, lineno, "the query text")
        if qid in seen:
            raise DataError(f"duplicate query id {qid!r}", path, lineno)
        seen.add(qid)
        ids.append(qid)
        texts.append(text)
    if not ids:
        raise DataError("no queries found", path)
    return ids, texts


class DocSource:
    """Documents to encode, by position: ``ids`` in corpus order and ``texts(start, stop)``."""

    def __init__(self, ids: Sequence[str], texts_fn, path: Path | str = ""):
        self.ids = list(ids)
        self._texts_fn = texts_fn
        self.path = str(path)

    def __len__(self) -> int:
        return len(self.ids)

    def texts(self, start: int, stop: int) -> list[str]:
        """Model input texts of documents ``start..stop-1``."""
        return self._texts_fn(start, stop)

    @classmethod
    def from_lists(cls, ids: Sequence[str], texts: Sequence[str], path: Path | str = "") -> DocSource:
        if len(ids) != len(texts):
            raise DensetuneError(f"{len(ids)} document ids for {len(texts)} texts")
        texts = list(texts)
        return cls(ids, lambda a, b: texts[a:b], path)

    @classmethod
    def from_corpus(cls, corpus) -> DocSource:
        """Wrap a :class:`densetune.data.corpus.Corpus` (memory-mapped; texts rendered with doc_text)."""
        from densetune.data.corpus import doc_text

        def texts(a: int, b: int) -> list[str]:
            return [doc_text(d) for d in corpus.docs(np.arange(a, b))]

        return cls(corpus.ids, texts, corpus.path or "")


def _is_nemo_doc_file(path: Path) -> bool:
    if not (path.is_file() and path.suffix == ".jsonl"):
        return False
    with open(path, encoding="utf-8") as f:
        for raw in f:
            if raw.strip():
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError:
                    return False
                return isinstance(obj, dict) and "pos_doc" in obj and "doc_id" in obj
    return False


def open_corpus(path: str | Path, *, cache_dir: str | Path | None = None) -> DocSource:
    """The documents of a NeMo document file (``doc_id``, ``pos_doc``) or of any corpus load_corpus reads.

    Raises:
        DataError: missing path, bad rows, duplicate ids.
    """
    path = Path(path)
    if not path.is_dir():
        check_input_file(path, "corpus")  # a FIFO or a device is named, never opened
    if _is_nemo_doc_file(path):
        ids: list[str] = []
        texts: list[str] = []
        seen: set[str] = set()
        for lineno, obj in _iter_json_lines(path):
            did = _pick(obj, ("doc_id", "id", "_id"), path, lineno, "the document id")
            text = _pick(obj, ("pos_doc", "text"), path, lineno, "the document text")
            if did in seen:
                raise DataError(f"duplicate document id {did!r}", path, lineno)
            seen.add(did)
            ids.append(did)
            texts.append(text)
        return DocSource.from_lists(ids, texts, path)
    from densetune.data.corpus import load_corpus

    return DocSource.from_corpus(load_corpus(path, cache_dir=cache_dir))


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


def lines_digest(ids: Sequence[str]) -> str:
    """SHA-1 of strings as lines: identifies a list of ids or texts in a ``.meta.json``."""
    h = hashlib.sha1()
    for i in ids:
        h.update(i.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _shard_paths(out: Path, k: int) -> tuple[Path, Path]:
    return out / f"{DOC}.shard-{k:05d}.npy", out / f"{DOC}.shard-{k:05d}.ids"


def _clear_doc_outputs(out: Path) -> None:
    npy = out / f"{DOC}.npy"
    compact = [quantize.rescore_path(npy), quantize.ranges_path(npy)]
    for p in [*out.glob(f"{DOC}.shard-*"), npy, out / f"{DOC}.ids", out / f"{DOC}.meta.json", *compact]:
        p.unlink(missing_ok=True)


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
    meta_path = out / f"{DOC}.meta.json"
    n_shards = (n + shard_size - 1) // shard_size
    # Every rank reads the state and checks it (so a refusal ends every rank alike); rank 0 alone writes.
    previous = {} if overwrite else read_meta(out, DOC)
    if previous.get("rescore_dtype") and rescore_dtype is None:
        settings["rescore_dtype"] = None  # a store asked for before and not now is another encode
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
    finished = previous.get("complete") and (out / f"{DOC}.npy").is_file() and (out / f"{DOC}.ids").is_file()
    distributed.barrier()  # every rank has read the state before rank 0 changes it
    if finished:
        if rank == 0:
            for p in out.glob(f"{DOC}.shard-*"):  # left over if the last run stopped right after merging
                p.unlink()
        distributed.barrier()
        return CorpusEncodeResult(True, n_shards, n_shards, 0, n)
    if rank == 0:
        if overwrite:
            _clear_doc_outputs(out)
        write_text_atomic(meta_path, json.dumps({**settings, "complete": False}, indent=2, sort_keys=True))
    distributed.barrier()

    # Shard k belongs to rank k % world; a shard already on disk (from any earlier run, with any number of
    # processes) is checked and kept.
    mine = [k for k in range(rank, n_shards, world)]
    todo = []
    for k in mine:
        if _shard_paths(out, k)[0].is_file():
            _check_shard(out, k, source.ids[k * shard_size : (k + 1) * shard_size])
        else:
            todo.append(k)
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
            npy, ids_path = _shard_paths(out, k)
            # ids first, array last: an existing shard .npy means its .ids is complete
            _write_ids(ids_path, source.ids[start:stop])
            _atomic_save_npy(npy, emb.astype(DTYPES.get(dtype, np.float32)))
            encoded += 1
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()
    encoded = sum(distributed.gather_objects(encoded, world))
    distributed.barrier()  # every rank's shards are on disk
    done = sum(_shard_paths(out, k)[0].is_file() for k in range(n_shards))
    if done < n_shards:
        return CorpusEncodeResult(False, n_shards, done, encoded, n)
    if rank == 0:
        dim = int(np.load(_shard_paths(out, 0)[0], mmap_mode="r").shape[1])
        _merge_shards(out, n_shards, n, dim, dtype, rescore_dtype)
        write_text_atomic(
            meta_path, json.dumps({**settings, "complete": True, "dim": dim}, indent=2, sort_keys=True)
        )
        for k in range(n_shards):
            for p in _shard_paths(out, k):
                p.unlink(missing_ok=True)
    distributed.barrier()
    return CorpusEncodeResult(True, n_shards, n_shards, encoded, n)


def _check_shard(out: Path, k: int, expected_ids: Sequence[str]) -> None:
    npy, ids_path = _shard_paths(out, k)
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
            with open(_shard_paths(out, k)[1], encoding="utf-8") as f:
                shutil.copyfileobj(f, f_ids)

    def blocks():
        return (np.load(_shard_paths(out, k)[0], mmap_mode="r") for k in range(n_shards))

    npy = out / f"{DOC}.npy"
    for target, kind in ((quantize.rescore_path(npy), rescore_dtype), (npy, dtype)):
        ranges = quantize.write_rows(target, blocks, n, dim, kind) if kind else None
        if ranges is not None:  # int8: calibrated on the whole corpus, kept for the queries and later corpora
            quantize.save_ranges(npy, ranges)
    os.replace(tmp_ids, out / f"{DOC}.ids")


# ---------------------------------------------------------------------------------------------------------
# Model loading (shared with evaluate and mine)


def load_encoder(
    model: str | Path | Encoder,
    *,
    device: str | None = None,
    precision: str | None = None,
    dim: int | None = None,
) -> Encoder:
    """A model folder/name -> :class:`densetune.models.biencoder.BiEncoder` on ``device`` (default: cuda if
    available); an object with ``encode_texts`` is returned as it is. ``precision`` (``auto`` | ``bf16`` |
    ``fp32``): what its forwards run in (:func:`densetune.precision.set_inference_precision`; a model loaded
    here gets bf16 weights under bf16, an object passed in runs under autocast); None: as it is. ``dim``:
    embeddings cut to their first ``dim`` dimensions (a :class:`~densetune.models.matryoshka.TruncatedEncoder`,
    renormalised when the model normalises)."""
    encoder = _load_encoder(model, device=device, precision=precision)
    if dim is None:
        return encoder
    from densetune.models.matryoshka import TruncatedEncoder

    return TruncatedEncoder(encoder, dim)


def _load_encoder(model: str | Path | Encoder, *, device: str | None, precision: str | None) -> Encoder:
    if not isinstance(model, (str, Path)):
        if not hasattr(model, "encode_texts"):
            raise DensetuneError(
                f"{type(model).__name__} has no encode_texts(); expected a model path or a BiEncoder"
            )
        set_inference_precision(model, precision)
        return model
    from densetune.models.biencoder import BiEncoder
    from densetune.retrieval.score import check_model_path

    path = check_model_path(str(model))  # a folder, or a hub id (from the local cache when offline)
    try:
        encoder = BiEncoder.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise DensetuneError(f"{path}: could not load the model: {err}") from None
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder = encoder.to(dev)
    set_inference_precision(encoder, precision, owned=True)
    return encoder


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
