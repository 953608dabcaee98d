"""Read training data in any supported format into canonical :class:`Example` records.

Formats are detected from content, not the file suffix (see :func:`detect_format` and docs/formats.md):
NeMo Automodel inline JSONL/JSON and corpus-id JSON, NeMo SBERT JSON, NeMo GPT-embedding JSONL,
FlagEmbedding JSONL, LLM-Embedder JSON(L), Tevatron JSONL and BEIR directories.

Every bad record becomes a :class:`DataError` whose ``str()`` is ``path:line: field: what is wrong, what was
expected``. :func:`iter_examples` raises the first one, or with ``skip_invalid=True`` skips and counts them
in a :class:`ReadStats`. Problems with a whole file (empty, binary, not UTF-8, broken JSON document, bad
corpus metadata) are raised even with ``skip_invalid``: there is no record to skip.

Files are read record by record (:mod:`densetune.data.jsonrecords`: large JSON documents incrementally, so
memory stays flat); corpus-id JSON and its bulk document lookup live in :mod:`densetune.data.corpus_id`, BEIR
directories in :mod:`densetune.data.beir`. This module detects the format, converts each record and chunks
the Examples for the store.
"""

from __future__ import annotations

import glob
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from densetune.data import beir
from densetune.data.corpus import MERLIN_METADATA, Corpus, doc_text
from densetune.data.corpus_id import CHUNK, Rows, corpus_id_items, open_corpus_id
from densetune.data.jsonrecords import (
    JsonStream,
    RawRecord,
    Record,
    iter_raw_records,
    jsonl_records,
    jtype,
    sniff_layout,
    text_lines,
    unread_fields,
)
from densetune.data.records import EXAMPLE_TYPES, Doc, Example
from densetune.errors import DataError
from densetune.paths import path_problem, walk_once

__all__ = [
    "FORMATS",
    "ReadStats",
    "detect_format",
    "doc_text",
    "expand_paths",
    "iter_examples",
]

FORMATS = (
    "beir",
    "nemo-corpus-id",
    "nemo-inline",
    "sbert",
    "gpt-embedding",
    "flag",
    "llm-embedder",
    "tevatron",
)
DATA_SUFFIXES = (".jsonl", ".json")
_DETECT_RECORDS = 50


@dataclass
class ReadStats:
    """Counts from reading: filled by :func:`iter_examples` when passed as ``stats``.

    Attributes:
        read: examples yielded.
        skipped: invalid records skipped (``skip_invalid=True``).
        errors: the DataError of every skipped record, in file order.
        notes: counts of what was read but is not trained on, by reason: records left out that are not errors (BEIR
            queries without a positive), and record fields the file's format does not read.
        formats: detected format of each file read.
        corpora: size of each corpus the data refers to, by corpus id.
    """

    read: int = 0
    skipped: int = 0
    errors: list[DataError] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)
    formats: dict[str, str] = field(default_factory=dict)
    corpora: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# Format detection

_FLAG_KEYS = {"pos_scores", "neg_scores", "prompt", "type", "category"}
_LLM_KEYS = {"teacher_scores", "history", "answers", "task"}


# record families: formats a single record already tells apart (the exact format inside a family may need
# several records, the suffix or the layout). One file holds one family; a record of another is reported.
_FAMILY_NAMES = {"tevatron": "Tevatron", "pos": "FlagEmbedding / LLM-Embedder", "nemo": "NeMo"}
_FORMAT_FAMILY = {
    "tevatron": "tevatron",
    "flag": "pos",
    "llm-embedder": "pos",
    "nemo-inline": "nemo",
    "sbert": "nemo",
    "gpt-embedding": "nemo",
}


def _family(record: dict) -> str | None:
    if "positive_passages" in record:
        return "tevatron"
    if "pos" in record or "history" in record:
        return "pos"
    if "pos_doc" in record or "question" in record:
        return "nemo"
    return None


def _record_format(keys: set[str], layout: str, suffix: str, records: list[dict]) -> str | None:
    if "positive_passages" in keys:
        return "tevatron"
    if "pos" in keys or "history" in keys:
        if keys & _LLM_KEYS - {"task"} or ("task" in keys and not keys & _FLAG_KEYS):
            return "llm-embedder"
        if keys & _FLAG_KEYS:
            return "flag"
        return "llm-embedder" if suffix == ".json" else "flag"
    if "pos_doc" in keys or "question" in keys:
        if layout == "jsonl" and {"query_id", "doc_id"} <= keys:
            return "gpt-embedding"
        sbert = layout == "json-array" and all(
            "query" in r and isinstance(r.get("pos_doc"), str) and isinstance(r.get("neg_doc"), list)
            for r in records
        )
        return "sbert" if sbert else "nemo-inline"
    return None


def detect_format(path: str | Path) -> str:
    """The format of a training file or directory, from its content.

    Returns:
        One of :data:`FORMATS`: ``beir`` (a directory with corpus.jsonl + queries.jsonl), ``nemo-corpus-id``
        (``{"corpus": [...], "data": [...]}``), ``tevatron`` (``positive_passages``), ``gpt-embedding``
        (JSONL with ``pos_doc`` + ``query_id`` + ``doc_id``), ``sbert`` (a JSON list of
        ``{query, pos_doc: str, neg_doc: [...]}``), ``nemo-inline`` (other ``pos_doc``/``question``
        records), ``llm-embedder`` (``pos`` with ``teacher_scores``/``history``/``answers``/``task``, or
        plain ``pos`` records in a ``.json`` file), ``flag`` (``pos`` with ``pos_scores``/``neg_scores``/
        ``prompt``/``type``, or plain ``pos`` records in ``.jsonl``).

    Raises:
        DataError: the file is unreadable (empty, binary, not UTF-8, broken JSON) or its records match no
            format.
    """
    path = Path(path)
    if path.is_dir():
        if beir.is_beir_dir(path):
            return "beir"
        if (path / MERLIN_METADATA).is_file():
            raise DataError(
                "this is a corpus directory (merlin_metadata.json), not training data; pass the corpus-id JSON that lists it",
                path,
            )
        raise DataError(
            "directory is not a BEIR dataset; expected corpus.jsonl, queries.jsonl and qrels/*.tsv", path
        )
    return _detect(path)[0]


def _detect(path: Path) -> tuple[str, str]:
    layout = sniff_layout(path)
    if layout == "json-object":
        with open(path, "rb") as f:
            stream = JsonStream(f, path)
            stream.expect("{", "'{'")
            for key, _ in stream.iter_keys():
                if key in ("corpus", "data"):
                    return "nemo-corpus-id", layout
                break
    records: list[dict] = []
    first_error: DataError | None = None
    first_line = 1
    try:
        for raw in iter_raw_records(path, layout):
            if isinstance(raw.obj, dict):
                records.append(raw.obj)
            elif first_error is None:
                first_error = raw.obj if isinstance(raw.obj, DataError) else None
                first_line = raw.line
            if len(records) >= _DETECT_RECORDS:
                break
    except DataError:
        if not records:
            raise  # otherwise reading reports it after the records before it

    if not records:
        if first_error is not None:
            raise first_error
        raise DataError(
            'no JSON object records; expected objects such as {"query": ..., "pos": [...]}', path, first_line
        )
    families = Counter(f for f in map(_family, records) if f is not None)
    if len(families) > 1:
        # a mixed file: read it as its majority family; every record of another family is reported by
        # _inline_items at its own line (instead of one format, chosen by a late record, blaming line 1)
        first = next(f for f in map(_family, records) if f is not None)
        major = max(families, key=lambda f: (families[f], f == first))
        records = [r for r in records if _family(r) in (major, None)]
    keys = set().union(*records)
    fmt = _record_format(keys, layout, path.suffix, records)
    if fmt is None:
        raise DataError(
            f"cannot tell the format from the keys {sorted(keys)[:12]}; expected query + pos_doc (NeMo), query + pos "
            "(FlagEmbedding / LLM-Embedder), positive_passages (Tevatron) or corpus + data (NeMo corpus-id)",
            path,
            first_line,
        )
    return fmt, layout


# ---------------------------------------------------------------------------------------------------------
# Record -> Example, one function per format


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _nemo_inline(rec: Record, task: str) -> Example:
    query = rec.string("query", aliases=("question",), what="the query text as a non-empty string")
    qid = rec.optional_id("question_id") or rec.optional_id("query_id") or rec.default_query_id()
    return Example(
        query_id=qid,
        query=query,
        positives=rec.text_docs("pos_doc", required=True, dicts=True),
        negatives=rec.text_docs("neg_doc", required=False, dicts=True),
        task=task,
        source=rec.source,
    )


def _gpt_embedding(rec: Record, task: str) -> Example:
    query = rec.string("query", what="the query text as a non-empty string")
    positives = rec.text_docs("pos_doc", required=True, dicts=False)
    doc_id = rec.optional_id("doc_id")
    if doc_id:
        positives[0].id = doc_id  # doc_id names the positive passage
    return Example(
        query_id=rec.optional_id("query_id") or rec.default_query_id(),
        query=query,
        positives=positives,
        negatives=rec.text_docs("neg_doc", required=False, dicts=False),
        task=task,
        source=rec.source,
    )


def _flag(rec: Record, task: str) -> Example:
    query = rec.string("query", what="the query text as a non-empty string")
    positives = rec.text_docs("pos", required=True, dicts=False)
    negatives = rec.text_docs("neg", required=False, dicts=False)
    kind = rec.string("type", required=False) or "retrieval"
    if kind not in EXAMPLE_TYPES:
        raise rec.err("type", f"unknown type {kind!r}; expected one of {', '.join(EXAMPLE_TYPES)}")
    return Example(
        query_id=rec.optional_id("query_id") or rec.default_query_id(),
        query=query,
        positives=positives,
        negatives=negatives,
        pos_scores=rec.scores("pos_scores", len(positives), _count(len(positives), "positive")),
        neg_scores=rec.scores("neg_scores", len(negatives), _count(len(negatives), "negative")),
        task=task,
        type=kind,
        prompt=rec.string("prompt", required=False),
        category=rec.string("category", required=False),
        source=rec.source,
    )


def _llm_embedder(rec: Record, task: str) -> Example:
    query = rec.string("query", what="the query text as a non-empty string")
    task = rec.string("task", required=False) or task
    history = rec.text_docs("history", required=False, dicts=False)
    if "history" in rec.obj and rec.obj["history"] is not None:
        # As the seed does: a history row has no positive; its history rows are the candidates, and the
        # teacher scores (aligned with them) decide the positive at selection time.
        positives: list[Doc] = []
        negatives = list(history)
        if rec.obj.get("teacher_scores") is None:
            raise rec.err(
                "teacher_scores", "missing; a record with history needs teacher_scores (one per history row)"
            )
    else:
        positives = rec.text_docs("pos", required=True, dicts=False)
        negatives = rec.text_docs("neg", required=False, dicts=False)
    n_pos, n_neg = len(positives), len(negatives)
    scores = rec.scores(
        "teacher_scores",
        n_pos + n_neg,
        f"{_count(n_pos, 'positive')} + {_count(n_neg, 'history row' if history else 'negative')}",
    )
    return Example(
        query_id=rec.optional_id("query_id") or rec.default_query_id(),
        query=query,
        positives=positives,
        negatives=negatives,
        pos_scores=scores[:n_pos] if scores is not None else None,
        neg_scores=scores[n_pos:] if scores is not None else None,
        task=task,
        history=history,
        answers=rec.strings("answers"),
        source=rec.source,
    )


def _tevatron(rec: Record, task: str) -> Example:
    query = rec.string("query", what="the query text as a non-empty string")

    def passages(key: str, required: bool) -> list[Doc]:
        value = rec.obj.get(key)
        if value is None:
            if required:
                raise rec.err(key, "missing; expected a list of {docid, title, text} passages")
            return []
        if not isinstance(value, list):
            raise rec.err(key, f"got {jtype(value)}; expected a list of {{docid, title, text}} passages")
        if required and not value:
            raise rec.err(key, "empty list; expected at least one positive passage")
        out = []
        for j, item in enumerate(value):
            if not isinstance(item, dict):
                raise rec.err(f"{key}[{j}]", f"got {jtype(item)}; expected a {{docid, title, text}} object")
            out.append(rec._dict_doc(item, f"{key}[{j}]", id_key="docid"))
        return out

    return Example(
        query_id=rec.optional_id("query_id") or rec.default_query_id(),
        query=query,
        positives=passages("positive_passages", True),
        negatives=passages("negative_passages", False),
        task=task,
        source=rec.source,
    )


_CONVERTERS = {
    "nemo-inline": _nemo_inline,
    "sbert": _nemo_inline,
    "gpt-embedding": _gpt_embedding,
    "flag": _flag,
    "llm-embedder": _llm_embedder,
    "tevatron": _tevatron,
}


def _inline_items(
    path: Path, fmt: str, layout: str, notes: Counter, raws: Iterable[RawRecord] | None = None
) -> Iterator[Example | DataError]:
    task = path.parent.name if fmt == "llm-embedder" else path.stem
    convert = _CONVERTERS[fmt]
    family = _FORMAT_FAMILY[fmt]
    for raw in iter_raw_records(path, layout) if raws is None else raws:
        if isinstance(raw.obj, DataError):
            yield raw.obj
            continue
        rec = Record(path, raw)
        if not isinstance(raw.obj, dict):
            yield rec.err("", f"got {jtype(raw.obj)}; expected a JSON object (one training record)")
            continue
        other = _family(raw.obj)
        if other is not None and other != family:
            yield rec.err(
                "",
                f"mixed formats: a {_FAMILY_NAMES[other]} record in a file read as {fmt} (its other records); "
                "expected one format per file",
            )
            continue
        try:
            example = convert(rec, task)
        except DataError as err:
            yield err
            continue
        example.extra = unread_fields(raw.obj, fmt, notes)
        yield example


def jsonl_format(path: str | Path) -> str | None:
    """The format of ``path`` when it is JSON lines of inline records (readable in blocks with
    :func:`block_items`, each on its own), else None (a directory, a JSON document, corpus-id JSON)."""
    path = Path(path)
    if path.is_dir():
        return None
    fmt, layout = _detect(path)
    return fmt if layout == "jsonl" and fmt in _CONVERTERS else None


def block_items(
    path: Path, fmt: str, block: bytes, first_line: int, first_index: int, notes: Counter
) -> Iterator[Example | DataError]:
    """What :func:`iter_chunks` reads from whole lines ``block`` of the JSON-lines file ``path`` (format
    ``fmt``, see :func:`jsonl_format`), the block starting at line ``first_line`` and record ``first_index``
    (its count of non-blank lines before: :func:`~densetune.data.jsonrecords.count_text_lines`)."""
    lines = text_lines(block.split(b"\n"), path, first_line)
    return _inline_items(path, fmt, "jsonl", notes, jsonl_records(lines, path, first_index))


# ---------------------------------------------------------------------------------------------------------
# Public reading API


@dataclass
class _Chunk:
    """Examples read together.

    ``rows[i]`` is None for an inline example (its documents are in the Example), else the rows of its
    positives, negatives and history in ``corpora[example.corpus_id]``; such an Example comes with empty
    document lists (fill them with :func:`fill_documents`).
    """

    examples: list[Example]
    rows: list[Rows | None]
    corpora: dict[str, Corpus]


def expand_paths(paths: str | Path | Iterable[str | Path], *, corpora: bool = False) -> list[Path]:
    """Files and BEIR directories to read, from files, directories and glob patterns.

    A directory that is a BEIR dataset stays one entry; other directories contribute their ``*.jsonl`` and
    ``*.json`` files recursively, except inside NeMo corpus directories (``merlin_metadata.json``), which are
    read through the corpus-id JSON that lists them (or listed themselves when ``corpora=True``).

    Each real directory and file is listed once (a symlink loop cannot repeat data).

    Raises:
        DataError: a path that does not exist or cannot be read as a file (a FIFO, a device, a symlink
            loop: said as such), a pattern that matches nothing, or a directory without data files.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists() and glob.has_magic(str(p)):
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            if not matches:
                raise DataError("no files match this pattern", p)
            out.extend(expand_paths(matches, corpora=corpora))
        elif p.is_dir():
            if beir.is_beir_dir(p) or (p / MERLIN_METADATA).is_file():
                out.append(p)
            else:
                found = _walk(p, corpora)
                if not found:
                    raise DataError(
                        "directory holds no training data; expected *.jsonl / *.json files or BEIR datasets",
                        p,
                    )
                out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            problem = path_problem(p)
            raise DataError("file or directory not found" if problem == "not found" else problem, p)
    return out


def _walk(directory: Path, corpora: bool) -> list[Path]:
    """Data files and BEIR / corpus directories under ``directory``, each real directory read once (a
    symlink loop would otherwise read the same files again and again)."""

    def keep(child: Path) -> bool | None:
        if child.is_dir():
            if beir.is_beir_dir(child):
                return True
            if (child / MERLIN_METADATA).is_file():
                return corpora
            return None  # descend
        return child.suffix in DATA_SUFFIXES and child.name != MERLIN_METADATA

    return list(walk_once(directory, keep))


def iter_chunks(
    path: str | Path,
    *,
    split: str = "train",
    skip_invalid: bool = False,
    stats: ReadStats | None = None,
    cache_dir: str | Path | None = None,
) -> Iterator[_Chunk]:
    """Examples of one file or BEIR directory in chunks, with corpus rows for documents given by id.

    This is what :func:`iter_examples` and the Arrow store are built on; see :func:`iter_examples`.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    cache = Path(cache_dir) if cache_dir is not None else None
    corpora: dict[str, Corpus] = {}
    if path.is_dir():
        fmt = detect_format(path)
        data = beir.load_beir(path, split, cache_dir=cache)
        corpora[data.corpus.corpus_id] = data.corpus
        stats.corpora[data.corpus.corpus_id] = len(data.corpus)
        stats.notes.update(data.notes)
        items: Iterable[Any] = beir.iter_beir_items(data, notes=stats.notes)
    else:
        fmt, layout = _detect(path)
        if fmt == "nemo-corpus-id":
            corpora, raws = open_corpus_id(path, cache)
            stats.corpora.update({cid: len(c) for cid, c in corpora.items()})
            items = corpus_id_items(path, corpora, raws, stats.notes)
        else:
            items = _inline_items(path, fmt, layout, stats.notes)
    stats.formats[str(path)] = fmt
    chunk = _Chunk([], [], corpora)
    for item in items:
        if isinstance(item, DataError):
            if not skip_invalid:
                raise item
            stats.skipped += 1
            stats.errors.append(item)
            continue
        example, rows = item if isinstance(item, tuple) else (item, None)
        chunk.examples.append(example)
        chunk.rows.append(rows)
        stats.read += 1
        if len(chunk.examples) >= CHUNK:
            yield chunk
            chunk = _Chunk([], [], corpora)
    if chunk.examples:
        yield chunk


def iter_examples(
    path: str | Path | Iterable[str | Path],
    *,
    split: str = "train",
    skip_invalid: bool = False,
    stats: ReadStats | None = None,
    resolve: bool = True,
    cache_dir: str | Path | None = None,
) -> Iterator[Example]:
    """Stream canonical Examples from a training file, a BEIR directory, or several (directories and globs
    are expanded with :func:`expand_paths`).

    Args:
        path: file(s) in any supported format, or a BEIR dataset directory.
        split: BEIR qrels split (``qrels/{split}.tsv``); ignored for files.
        skip_invalid: skip invalid records, counting them in ``stats``, instead of raising the first.
        stats: a :class:`ReadStats` to fill with counts, errors, formats and corpus sizes.
        resolve: fill the texts of documents given by id (corpus-id JSON, BEIR) from their corpus. With
            False they come with ``text=""`` (faster; enough for validation).
        cache_dir: where corpus conversions are cached (default ``$DENSETUNE_CACHE`` or ~/.cache/densetune).

    Yields:
        Examples in file order, ``source="path:line"``.

    Raises:
        DataError: the first invalid record (unless ``skip_invalid``), or a problem with a whole file.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    for p in expand_paths(paths):
        for chunk in iter_chunks(p, split=split, skip_invalid=skip_invalid, stats=stats, cache_dir=cache_dir):
            fill_documents(chunk, text=resolve)
            yield from chunk.examples


def fill_documents(chunk: _Chunk, *, text: bool = True) -> None:
    """Give the chunk's corpus-backed Examples their documents, one bulk take per corpus.

    With ``text=False`` documents carry only their ids (cheaper).
    """
    wanted: dict[str, list[np.ndarray]] = {}
    for example, rows in zip(chunk.examples, chunk.rows):
        if rows is not None:
            wanted.setdefault(example.corpus_id, []).extend(rows)
    docs = {
        cid: iter(chunk.corpora[cid].docs(np.concatenate(parts), text=text)) for cid, parts in wanted.items()
    }
    for example, rows in zip(chunk.examples, chunk.rows):
        if rows is None:
            continue
        it = docs[example.corpus_id]
        example.positives = [next(it) for _ in range(len(rows[0]))]
        example.negatives = [next(it) for _ in range(len(rows[1]))]
        example.history = [next(it) for _ in range(len(rows[2]))]
