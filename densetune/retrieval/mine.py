"""Hard-negative mining of training files: encode, retrieve, select negatives, write; and ``densetune mine``.

Selection rules (rank window, margins, sampling, random fill) and statistics live in
:mod:`densetune.retrieval.negatives`; their names are importable from here too.

Command: ``densetune mine --model M --data TRAIN --corpus C --out FILE`` reads training data in any format
:func:`densetune.data.formats.iter_examples` reads (or a BEIR directory with ``--split``), replaces each
example's negatives by mined ones (and with ``--with-scores`` writes the model's ``pos_scores`` /
``neg_scores``), writes them with :func:`densetune.data.writers.write_examples`, prints statistics, and saves
the settings and statistics beside the output as ``FILE.mine.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from densetune import distributed
from densetune.errors import DataError, DensetuneError
from densetune.models.matryoshka import add_dim_argument, single_dim
from densetune.paths import add_overwrite_argument, check_output, write_text_atomic
from densetune.precision import add_precision_argument
from densetune.retrieval.negatives import (
    FILL,
    SAMPLING,
    SKIP_REASONS,
    MinedNegatives,
    MiningConfig,
    MiningStats,
    _similarity,
    mine_hard_negatives,
    mine_with_retriever,
    select_negatives,
    text_key,
)
from densetune.retrieval.search import SearchConfig

RETRIEVERS = ("dense", "bm25")

__all__ = [
    "FILL",
    "SAMPLING",
    "SKIP_REASONS",
    "MinedNegatives",
    "MiningConfig",
    "MiningStats",
    "mine",
    "mine_hard_negatives",
    "select_negatives",
    "text_key",
]


def mine(
    model,
    data: str | Path,
    out: str | Path,
    *,
    corpus: str | Path | None = None,
    corpus_embeddings: str | Path | None = None,
    fmt: str = "flag",
    config: MiningConfig | None = None,
    split: str = "train",
    with_scores: bool = False,
    drop_empty: bool = False,
    batch_size: int = 64,
    max_length: int | None = None,
    search_config: SearchConfig | None = None,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    retriever: str = "dense",
    bm25_config=None,
    precision: str | None = None,
    dim: int | None = None,
) -> MiningStats:
    """Mine hard negatives for a training file and write the result.

    Args:
        model: model directory or an encoder object (:class:`densetune.retrieval.encode.Encoder`); unused
            (may be None) with ``retriever="bm25"``.
        data: training data in any format iter_examples reads, or a BEIR directory (with ``split``).
        out: output file.
        corpus: the corpus negatives come from (anything load_corpus reads); default: ``data`` when it is
            a BEIR directory.
        corpus_embeddings: directory for the corpus embeddings (doc.npy + doc.ids): reused when present,
            else encoded there (sharded, resumable); None: encoded in memory.
        fmt: output format: flag | inline | corpus-id | tevatron.
        config: selection rules.
        split: BEIR qrels split when ``data`` is a BEIR directory.
        with_scores: write the model's scores as ``pos_scores`` / ``neg_scores`` (only ``flag`` carries
            them). Without it, scores read from the input are cleared: they belong to other negatives.
        drop_empty: leave out examples that got no negative (counted); default keeps them.
        batch_size / max_length / device: encoding settings.
        search_config: candidate retrieval settings.
        cache_dir: corpus cache directory.
        show_progress: tqdm bars.
        retriever: ``dense`` (the model's embeddings) or ``bm25`` (candidates and scores from BM25 over
            the corpus texts, :mod:`densetune.retrieval.bm25`; the selection rules are the same, margins
            apply to BM25 scores).
        bm25_config: :class:`densetune.retrieval.bm25.BM25Config` for ``retriever="bm25"``.
        precision: ``auto`` | ``bf16`` | ``fp32`` for the model's forwards (:mod:`densetune.precision`).
        dim: retrieve and score with the first ``dim`` dimensions of the embeddings (a Matryoshka model's
            cut, renormalised when the model normalises); None: all.

    Under torchrun each rank mines a contiguous slice of the queries against the whole corpus (random
    sampling and fill seeded by the global query index, so the result equals one process's), the corpus is
    encoded by all ranks together, and rank 0 writes.

    Returns:
        The :class:`MiningStats` (also printed by the command, and saved in ``OUT.mine.json``).
    """
    from densetune.data.beir import is_beir_dir
    from densetune.data.corpus import doc_text, load_corpus
    from densetune.data.formats import iter_examples
    from densetune.data.writers import write_examples

    config = config or MiningConfig()
    _check_retriever(retriever, model)
    data = Path(data)
    if corpus is None:
        if not is_beir_dir(data):
            raise DensetuneError("--corpus is required unless --data is a BEIR directory")
        corpus = data
    examples = list(iter_examples(data, split=split, cache_dir=cache_dir))
    if not examples:
        raise DataError("no training examples found", data)
    for ex in examples:
        if not ex.positives:
            raise DataError("example has no positive document; mining needs one per query", ex.source or data)
    corpus_obj = load_corpus(corpus, cache_dir=cache_dir)
    rank, world = distributed.rank(), distributed.world_size()
    lo, hi = len(examples) * rank // world, len(examples) * (rank + 1) // world
    local = examples[lo:hi]
    positive_keys = [
        # a positive matches a corpus text rendered with its title, or its bare text
        [k for p in ex.positives for k in {text_key(doc_text(p)), text_key(p.text)}]
        for ex in local
    ]
    query_keys = np.array([text_key(ex.query) for ex in local], dtype=np.int64)
    if retriever == "bm25":
        from densetune.retrieval.bm25 import BM25Config

        bm25_config = bm25_config or BM25Config()
        corpus_rows = np.arange(len(corpus_obj), dtype=np.int64)
        mined = mine_bm25(
            [ex.query for ex in local],
            [[p.id for p in ex.positives] for ex in local],
            corpus_obj,
            config,
            bm25_config,
            doc_keys=_doc_keys(corpus_obj, corpus_rows),
            query_keys=query_keys,
            positive_keys=positive_keys,
            show_progress=show_progress,
            query_offset=lo,
        )
        meta = {"model": f"bm25 (k1={bm25_config.k1}, b={bm25_config.b})"}
    else:
        corpus_rows, meta, mined = _mine_dense(
            model, local, corpus_obj, corpus, corpus_embeddings, config, search_config, batch_size,
            max_length, device, precision, query_keys, positive_keys, show_progress,
            query_offset=lo, query_cache="mine_query" if world == 1 else f"mine_query.{lo}-{hi}", dim=dim,
        )  # fmt: skip
    if world > 1:
        mined = MinedNegatives.concat(distributed.gather_objects(mined, world))
        if rank != 0:
            distributed.barrier()  # rank 0 writes
            return mined.stats

    def with_negatives():
        for ex, rows, scores, pos, negatives in zip(
            examples,
            mined.indices,
            mined.scores,
            mined.positive_scores,
            _negative_docs(corpus_obj, corpus_rows, mined),
        ):
            if drop_empty and len(rows) == 0:
                continue
            ex.negatives = negatives
            if with_scores:
                ex.pos_scores = [float(s) for s in pos]
                ex.neg_scores = [float(s) for s in scores]
            else:
                ex.pos_scores = ex.neg_scores = None
            yield ex

    write_examples(with_negatives(), out, fmt)
    report = {
        "data": str(data),
        "split": split,
        "corpus": str(corpus),
        "model": meta["model"],
        "retriever": retriever,
        "format": fmt,
        "with_scores": with_scores,
        "config": asdict(config),
        "stats": mined.stats.to_dict(),
        "dropped_empty": mined.stats.empty_queries if drop_empty else 0,
    }
    write_text_atomic(str(out) + ".mine.json", json.dumps(report, indent=2))
    distributed.barrier()
    return mined.stats


def _negative_docs(corpus_obj, corpus_rows: np.ndarray, mined: MinedNegatives, block: int = 4096):
    """Per query, its negatives as documents; read from the corpus for ``block`` queries at once (one take
    per block instead of one per query)."""
    for start in range(0, len(mined.indices), block):
        rows = mined.indices[start : start + block]
        docs = corpus_obj.docs(corpus_rows[np.concatenate(rows)]) if rows else []
        ends = np.cumsum([len(r) for r in rows])
        for lo, hi in zip(np.concatenate([[0], ends[:-1]]), ends):
            yield docs[lo:hi]


def mine_bm25(
    queries: Sequence[str],
    positive_ids: Sequence[Sequence[str]],
    corpus,
    mining_config=None,
    config=None,
    *,
    doc_keys: np.ndarray | None = None,
    query_keys: np.ndarray | None = None,
    positive_keys: Sequence[Sequence[int]] | None = None,
    show_progress: bool = False,
    query_offset: int = 0,
):
    """Hard negatives from BM25 candidates, chosen by the same rules as dense mining
    (:func:`densetune.retrieval.negatives.mine_with_retriever`); scores and margins are BM25 scores.

    Args:
        queries: query texts.
        positive_ids: per query, ids of its positives (a positive outside the corpus has no BM25 score).
        corpus: a :class:`densetune.data.corpus.Corpus` (rows of the result index it).
        mining_config: :class:`densetune.retrieval.negatives.MiningConfig`.
        config: :class:`densetune.retrieval.bm25.BM25Config`.
        doc_keys / query_keys / positive_keys: text keys, as :func:`mine_with_retriever` takes them.
        query_offset: global index of the first query (one process's slice under torchrun).

    Returns:
        :class:`densetune.retrieval.negatives.MinedNegatives`.
    """
    from densetune.data.corpus import doc_text
    from densetune.retrieval.bm25 import BM25Index

    index = BM25Index([doc_text(d) for d in corpus], config, show_progress=show_progress)
    return mine_with_retriever(
        lambda depth: index.search(queries, depth),
        lambda i, rows: index.score(queries[i], rows),
        len(queries),
        positive_ids,
        list(corpus.ids),
        mining_config,
        doc_keys=doc_keys,
        query_keys=query_keys,
        positive_keys=positive_keys,
        query_offset=query_offset,
    )


def _check_retriever(retriever: str, model) -> None:
    if retriever not in RETRIEVERS:
        raise DensetuneError(f"unknown retriever {retriever!r}; expected one of {', '.join(RETRIEVERS)}")
    if retriever == "dense" and model is None:
        raise DensetuneError("--model is required unless --retriever bm25")


def _mine_dense(
    model, examples, corpus_obj, corpus, corpus_embeddings, config, search_config, batch_size, max_length,
    device, precision, query_keys, positive_keys, show_progress, *, query_offset=0, query_cache="mine_query",
    dim=None,
):  # fmt: skip
    """Dense candidates: encode (or reuse) the corpus and the queries, then the selection rules.

    ``examples`` are this process's queries (``query_offset``: the global index of the first); the query
    embeddings are kept as ``corpus_embeddings/{query_cache}.npy`` when a directory is given.

    Returns ``(corpus_rows, meta, mined)``: rows of the corpus table in embedding order, the encoder's
    metadata, and the :class:`MinedNegatives` (rows index the embeddings)."""
    from densetune.data.inputs import DocSource
    from densetune.retrieval.embeddings import load_embeddings, read_meta
    from densetune.retrieval.encode import DEFAULT_SHARD_SIZE, encode_corpus

    search_config = search_config or SearchConfig()
    encoder, meta = _encoder_and_meta(model, device, precision, max_length, dim)

    # corpus embeddings: rows follow doc_ids; corpus_rows maps them to rows of the corpus table
    if (
        corpus_embeddings is not None
        and (Path(corpus_embeddings) / "doc.npy").is_file()
        and not (Path(corpus_embeddings) / "doc.meta.json").is_file()
    ):
        doc_ids, doc_emb = load_embeddings(corpus_embeddings, "doc")  # produced elsewhere: trusted as is
    elif corpus_embeddings is not None:
        # an earlier `densetune encode` may have stored them in float16 or in other shards: keep its layout
        # (the model, length and corpus checks still apply)
        layout = read_meta(corpus_embeddings, "doc")
        encode_corpus(
            encoder,
            DocSource.from_corpus(corpus_obj),
            corpus_embeddings,
            dtype=layout.get("dtype", "float32"),
            shard_size=layout.get("shard_size", DEFAULT_SHARD_SIZE),
            batch_size=batch_size,
            max_length=max_length,
            meta=meta,
            show_progress=show_progress,
        )
        doc_ids, doc_emb = load_embeddings(corpus_embeddings, "doc")
    else:
        doc_ids = corpus_obj.ids
        doc_emb = _embed_corpus(encoder, corpus_obj, batch_size, max_length, show_progress)
    corpus_rows = corpus_obj.rows(doc_ids)
    if (corpus_rows < 0).any():
        missing = doc_ids[int(np.flatnonzero(corpus_rows < 0)[0])]
        raise DataError(
            f"embedding id {missing!r} is not in the corpus {corpus}; re-encode the corpus", corpus_embeddings
        )

    query_emb = _query_embeddings(
        encoder,
        [ex.query for ex in examples],
        corpus_embeddings,
        query_cache,
        meta,
        batch_size,
        max_length,
        show_progress,
    )
    positive_scores = _example_positive_scores(
        encoder,
        examples,
        query_emb,
        doc_ids,
        doc_emb,
        batch_size,
        max_length,
        show_progress,
        search_config.normalize,
    )
    mined = mine_hard_negatives(
        query_emb,
        [[p.id for p in ex.positives] for ex in examples],
        doc_emb,
        doc_ids,
        config,
        positive_scores=positive_scores,
        doc_keys=_doc_keys(corpus_obj, corpus_rows),
        query_keys=query_keys,
        positive_keys=positive_keys,
        search_config=search_config,
        show_progress=show_progress,
        query_offset=query_offset,
    )

    return corpus_rows, meta, mined


class _LazyEncoder:
    """The encoder ``load()`` gives, loaded when a text must first be encoded: mining from saved corpus and
    query embeddings never loads the model (importing transformers and reading the weights took most of
    such a run's time)."""

    def __init__(self, load):
        self._load = load
        self._encoder = None

    def encode_texts(self, *args, **kwargs):
        if self._encoder is None:
            self._encoder = self._load()
        return self._encoder.encode_texts(*args, **kwargs)


def _encoder_and_meta(model, device, precision, max_length, dim=None):
    """The encoder of ``model`` and its :func:`densetune.retrieval.encode.encoder_meta` (what the saved
    embeddings are checked against). For a model folder the encoder is a :class:`_LazyEncoder` and the
    metadata is read without loading it: normalisation from the folder's settings, bf16 or fp32 from
    ``precision`` on the device ``load_encoder`` would use (tests check both equal the loaded model's);
    ``dim``: a Matryoshka cut, recorded as ``truncate_dim``."""
    import torch

    from densetune.models.biencoder import folder_normalizes
    from densetune.models.loaders import load_encoder
    from densetune.precision import resolve_precision
    from densetune.retrieval.encode import encoder_meta

    def load():
        return load_encoder(model, device=device, precision=precision, dim=dim)

    if not (isinstance(model, (str, Path)) and Path(model).is_dir()):  # an encoder object, or a hub id
        name = str(Path(model).resolve()) if isinstance(model, (str, Path)) else ""
        encoder = load()
        return encoder, encoder_meta(encoder, name, max_length)
    on = device or ("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = precision is not None and resolve_precision(precision, on).bf16
    meta = {
        "model": str(Path(model).resolve()),
        "max_length": max_length,
        "normalized": folder_normalizes(str(model)),
        "precision": "bf16" if bf16 else "fp32",
        "truncate_dim": dim,
    }
    return _LazyEncoder(load), meta


def _doc_keys(corpus_obj, corpus_rows: np.ndarray) -> np.ndarray:
    """Text keys [N, 2] of the corpus rows: column 0 the text the model sees (title + text); column 1 the
    bare text, which is what a query copied from the corpus usually holds (ArguAna-style)."""
    from densetune.data.corpus import doc_text

    doc_keys = np.empty((len(corpus_rows), 2), dtype=np.int64)
    for start in range(0, len(corpus_rows), 8192):
        docs = corpus_obj.docs(corpus_rows[start : start + 8192])
        doc_keys[start : start + len(docs)] = [(text_key(doc_text(d)), text_key(d.text)) for d in docs]
    return doc_keys


def _query_embeddings(
    encoder, texts, directory, kind, meta, batch_size, max_length, show_progress
) -> np.ndarray:
    """The queries' embeddings: read from ``directory/{kind}.npy`` when an earlier mine of the same queries
    with the same model settings saved them there, else encoded (and saved there when a directory is given).

    The corpus-embeddings directory holds them, so a second mine over the same data (other selection rules)
    encodes nothing; the file name keeps them apart from ``densetune encode --queries`` output.
    """
    from densetune.retrieval.embeddings import lines_digest, load_embeddings, read_meta, write_embeddings
    from densetune.retrieval.encode import embed_texts

    wanted = {**meta, "texts_sha1": lines_digest(texts)}
    if directory is not None:
        saved = read_meta(directory, kind)
        if saved.get("complete") and {k: saved.get(k) for k in wanted} == wanted:
            return np.asarray(load_embeddings(directory, kind, mmap=False)[1], dtype=np.float32)
    emb = embed_texts(
        encoder,
        texts,
        is_query=True,
        batch_size=batch_size,
        max_length=max_length,
        show_progress=show_progress,
    )
    if directory is not None:
        write_embeddings(directory, kind, [str(i) for i in range(len(texts))], emb, meta=wanted)
    return emb


def _embed_corpus(encoder, corpus_obj, batch_size, max_length, show_progress) -> np.ndarray:
    """The corpus embedded in memory; under torchrun each rank embeds a slice and every rank gets all."""
    from densetune.data.corpus import doc_text
    from densetune.retrieval.encode import embed_texts

    rank, world = distributed.rank(), distributed.world_size()
    n = len(corpus_obj)
    rows = np.arange(n * rank // world, n * (rank + 1) // world)
    emb = embed_texts(
        encoder,
        [doc_text(d) for d in corpus_obj.docs(rows)],
        is_query=False,
        batch_size=batch_size,
        max_length=max_length,
        show_progress=show_progress and rank == 0,
    )
    return np.concatenate(distributed.gather_objects(emb, world)) if world > 1 else emb


def _example_positive_scores(
    encoder, examples, query_emb, doc_ids, doc_emb, batch_size, max_length, show_progress, normalize
):
    """Score of every positive: from the corpus embedding when its id is in the corpus, else encoded."""
    from densetune.data.corpus import doc_text
    from densetune.retrieval.encode import embed_texts

    row_of = {d: i for i, d in enumerate(doc_ids)}
    to_encode = [
        (i, j) for i, ex in enumerate(examples) for j, p in enumerate(ex.positives) if p.id not in row_of
    ]
    encoded = None
    if to_encode:
        encoded = embed_texts(
            encoder,
            [doc_text(examples[i].positives[j]) for i, j in to_encode],
            is_query=False,
            batch_size=batch_size,
            max_length=max_length,
            show_progress=show_progress,
        )
    where = {pair: k for k, pair in enumerate(to_encode)}
    scores = []
    for i, ex in enumerate(examples):
        s = np.empty(len(ex.positives), dtype=np.float32)
        for j, p in enumerate(ex.positives):
            vec = (
                encoded[where[(i, j)]]
                if (i, j) in where
                else np.asarray(doc_emb[row_of[p.id]], dtype=np.float32)
            )
            s[j] = _similarity(query_emb[i], vec[None, :], normalize)[0]
        scores.append(s)
    return scores


# ---------------------------------------------------------------------------------------------------------
# densetune mine


def _optional_float(text: str) -> float | None:
    if text.lower() in ("none", "off", ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from densetune.data.writers import WRITE_FORMATS
    from densetune.retrieval.search import INDEX_TYPES

    d = MiningConfig()
    parser.add_argument("--model", help="model directory used to retrieve candidates (--retriever dense)")
    parser.add_argument(
        "--data", required=True, help="training data (any supported format) or BEIR directory"
    )
    parser.add_argument(
        "--corpus", help="corpus the negatives come from (default: --data when it is a BEIR dir)"
    )
    parser.add_argument(
        "--corpus-embeddings", help="directory for doc.npy/doc.ids: reused if there, else encoded there"
    )
    parser.add_argument("--out", required=True, help="output training file")
    parser.add_argument(
        "--format", choices=WRITE_FORMATS, default="flag", help="output format (default: flag)"
    )
    parser.add_argument("--split", default="train", help="qrels split of a BEIR --data (default: train)")
    parser.add_argument(
        "--num-negatives", type=int, default=d.num_negatives, help=f"default: {d.num_negatives}"
    )
    parser.add_argument(
        "--range-min", type=int, default=d.range_min, help="first rank considered (default: 0)"
    )
    parser.add_argument(
        "--range-max", type=int, default=d.range_max, help=f"rank limit (default: {d.range_max})"
    )
    parser.add_argument(
        "--absolute-margin", type=_optional_float, default=d.absolute_margin, help="drop above pos - X"
    )
    parser.add_argument(
        "--relative-margin",
        type=_optional_float,
        default=d.relative_margin,
        help=f"drop above pos - |pos|*X (default: {d.relative_margin}; 'none' disables)",
    )
    parser.add_argument(
        "--max-score", type=_optional_float, default=d.max_score, help="drop candidates above"
    )
    parser.add_argument(
        "--min-score", type=_optional_float, default=d.min_score, help="drop candidates below"
    )
    parser.add_argument(
        "--sampling", choices=SAMPLING, default=d.sampling, help="top or random (default: top)"
    )
    parser.add_argument(
        "--seed", type=int, default=d.seed, help=f"seed of random sampling (default: {d.seed})"
    )
    parser.add_argument(
        "--fill",
        choices=FILL,
        default=d.fill,
        help="top up queries left short with random corpus documents (default: none)",
    )
    parser.add_argument(
        "--with-scores", action="store_true", help="write pos_scores/neg_scores (teacher scores)"
    )
    parser.add_argument("--drop-empty", action="store_true", help="leave out examples that got no negative")
    parser.add_argument(
        "--index", choices=INDEX_TYPES, default="exact", help="candidate search (default: exact)"
    )
    parser.add_argument(
        "--retriever",
        choices=RETRIEVERS,
        default="dense",
        help="candidates from the model (dense, default) or BM25 over the corpus texts (no model needed)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: 64)")
    parser.add_argument("--max-length", type=int, default=None, help="token limit (default: the model's)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    add_precision_argument(parser)
    add_dim_argument(parser)
    parser.add_argument(
        "--cache-dir", default=None, help="corpus cache (default: $DENSETUNE_CACHE or ~/.cache/densetune)"
    )
    add_overwrite_argument(parser, "--out and its .mine.json")


def main(args: argparse.Namespace) -> int:
    config = MiningConfig(
        num_negatives=args.num_negatives,
        range_min=args.range_min,
        range_max=args.range_max,
        absolute_margin=args.absolute_margin,
        relative_margin=args.relative_margin,
        max_score=args.max_score,
        min_score=args.min_score,
        sampling=args.sampling,
        seed=args.seed,
        fill=args.fill,
    )
    # torchrun: every rank encodes and mines its share, rank 0 writes and reports
    rank, world, device = distributed.join(args.device)
    _check_retriever(args.retriever, args.model)  # argument errors before output ones
    dim = single_dim(args.dim)
    if dim is not None and args.retriever != "dense":
        raise DensetuneError("--dim truncates the model's embeddings: it needs --retriever dense")
    for path in (args.out, f"{args.out}.mine.json"):
        check_output(path, args.overwrite)
    if args.with_scores and args.format != "flag" and rank == 0:
        print(f"note: the {args.format} format cannot carry scores; use --format flag to keep them")
    start = time.perf_counter()
    stats = mine(
        args.model,
        args.data,
        args.out,
        corpus=args.corpus,
        corpus_embeddings=args.corpus_embeddings,
        fmt=args.format,
        config=config,
        split=args.split,
        with_scores=args.with_scores,
        drop_empty=args.drop_empty,
        batch_size=args.batch_size,
        max_length=args.max_length,
        search_config=SearchConfig(index=args.index, device=device, precision=args.precision),
        device=device,
        cache_dir=args.cache_dir,
        precision=args.precision,
        retriever=args.retriever,
        dim=dim,
    )
    if rank == 0:
        print(stats.summary())
        print(
            f"wrote {args.out} ({args.format}) in {time.perf_counter() - start:.1f}s"
            + (f" ({world} processes)" if world > 1 else "")
            + f"; statistics in {args.out}.mine.json"
        )
    return 0
