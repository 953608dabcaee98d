"""Corpora: documents looked up by id, memory-mapped from an Arrow cache; and how a document becomes text.

A corpus (a NeMo corpus directory with ``merlin_metadata.json``, a BEIR ``corpus.jsonl``, or a single
``.jsonl`` / ``.parquet`` file of ``id, text[, title]`` rows) is converted once into an Arrow IPC file plus
an open-addressing hash index over the ids (two ``.npy`` files, :mod:`densetune.data.idindex`), all
memory-mapped. A corpus of tens of millions of passages then costs disk, not RAM: ``get(id)`` touches a few
pages, and nothing is loaded up front. The source's rows are read and checked by :mod:`densetune.data.docrows`;
the conversion is cached under ``cache_dir/corpora/<key>`` (:mod:`densetune.data.arrowcache`), keyed by the
source files' paths, sizes and modification times, so a second load takes milliseconds.

Text rendering: :func:`doc_text` is the one place that turns a :class:`Doc` into the string a model sees:
``title + " " + text`` when the title is non-empty, else ``text`` (the BEIR convention).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from densetune.caps import MAX_CORPUS, env_cap, notice
from densetune.data.arrowcache import (
    cache_key,
    default_cache_dir,
    fingerprint,
    open_table,
    publish_dir,
    write_table,
)
from densetune.data.docrows import DOC_SCHEMA, jsonl_batches, parquet_batches
from densetune.data.idindex import Column, IdIndex
from densetune.data.jsonrecords import jtype
from densetune.data.records import INLINE_CORPUS_ID, Doc
from densetune.data.trec import read_qrels
from densetune.errors import DataError
from densetune.paths import path_problem, walk_once

MERLIN_METADATA = "merlin_metadata.json"
CORPUS_SUFFIXES = (".parquet", ".jsonl", ".json")


def doc_text(doc: Doc) -> str:
    """The text a model sees for a document: ``"{title} {text}"`` when it has a title, else ``text``.

    This is the BEIR convention (and LLM-Embedder's ``key_template="{title} {text}"``). Formats that cannot
    carry a title separately (FlagEmbedding, LLM-Embedder, SBERT) are written with this rendering.
    """
    return f"{doc.title} {doc.text}" if doc.title else doc.text


# ---------------------------------------------------------------------------------------------------------
# The Corpus object


class CorpusError(DataError):
    """Every problem found in one corpus (``errors``); ``str()`` is the first, with a count of the rest."""

    def __init__(self, errors: list[DataError]):
        self.errors = errors
        first = errors[0]
        more = f" (and {len(errors) - 1} more problems in this corpus)" if len(errors) > 1 else ""
        super().__init__(first.message + more, first.path, first.line, first.field)


@dataclass
class _CorpusFiles:
    """Where a corpus comes from: its id, its metadata, its data files, and what its cache is keyed by."""

    path: Path
    corpus_id: str
    metadata: dict[str, Any]
    data_files: list[Path]
    key_files: list[Path]


class Corpus:
    """Documents by id, memory-mapped.

    Attributes:
        corpus_id: the corpus' id (``merlin_metadata.json`` ``corpus_id``, the BEIR directory name, or the
            file stem); ``"__inline__"`` for the documents of inline training data.
        metadata: the corpus' ``merlin_metadata.json`` (``class``, ``corpus_id``, and optionally
            ``query_instruction``, ``passage_instruction``, ``task_type``); ``{}`` for other sources.
        path: the directory or file it was read from.
        table: the Arrow table (``id``, ``text``, ``title``, ``image``, ``extra``: :data:`~densetune.data.docrows.DOC_SCHEMA`).

    Example:
        >>> corpus = load_corpus("examples/corpus_id/wiki")
        >>> corpus.get("wiki-3").text
    """

    def __init__(
        self,
        table: pa.Table,
        corpus_id: str,
        metadata: dict[str, Any] | None = None,
        path: str | Path | None = None,
        index_dir: str | Path | None = None,
        key: str = "",
        arrow_path: str | Path | None = None,
    ):
        self.table = table
        self.corpus_id = corpus_id
        self.metadata = dict(metadata or {})
        self.path = Path(path) if path is not None else None
        self.key = key
        self._columns = {name: Column(table.column(name)) for name in table.column_names}
        self._index_dir = Path(index_dir) if index_dir is not None else None
        self._arrow_path = Path(arrow_path) if arrow_path is not None else None
        self._index: IdIndex | None = None
        self._non_empty: dict[str, bool] = {}

    @classmethod
    def open(
        cls,
        arrow_path: str | Path,
        corpus_id: str,
        metadata: dict[str, Any] | None = None,
        path: str | Path | None = None,
        index_dir: str | Path | None = None,
        key: str = "",
    ) -> Corpus:
        """Memory-map a converted corpus (``docs.arrow`` and, in ``index_dir``, its id index)."""
        return cls(open_table(Path(arrow_path)), corpus_id, metadata, path, index_dir, key, arrow_path)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Pickle by reference to the memory-mapped files (DataLoader workers re-map them), not by value.
        if self._arrow_path is None:
            return super().__reduce_ex__(protocol)
        args = (str(self._arrow_path), self.corpus_id, self.metadata, self.path, self._index_dir, self.key)
        return (Corpus.open, args)

    def _has(self, name: str) -> bool:
        """Whether any document has a non-empty ``name`` column (so all-empty titles cost no take)."""
        if name not in self._non_empty:
            cols = self._columns.get(name)
            self._non_empty[name] = cols is not None and any(
                (pc.max(pc.binary_length(c)).as_py() or 0) > 0 for c in cols.chunks
            )
        return self._non_empty[name]

    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        return f"Corpus({self.corpus_id!r}, {len(self)} documents, path={str(self.path)!r})"

    @property
    def index(self) -> IdIndex:
        if self._index is None:
            if self._index_dir is not None and (self._index_dir / "slots.npy").is_file():
                self._index = IdIndex.load(self._index_dir, self._columns["id"])
            else:
                self._index, _ = IdIndex.build(self._columns["id"])
        return self._index

    @property
    def ids(self) -> list[str]:
        """All document ids in corpus order (materialised as a list; use ``table.column("id")`` for Arrow)."""
        return self.table.column("id").to_pylist()

    def rows(self, doc_ids: list[str]) -> np.ndarray:
        """Row of each id (int64), -1 for ids the corpus does not have. Vectorised; use it for many ids."""
        return self.index.lookup(list(doc_ids))

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and bool(self.rows([doc_id])[0] >= 0)

    def get(self, doc_id: str) -> Doc:
        """The document with this id.

        Raises:
            DataError: the id is not in the corpus (naming the id, the corpus id and its path).
        """
        row = self.rows([str(doc_id)])[0]
        if row < 0:
            raise DataError(
                f"unknown document id {doc_id!r} in corpus {self.corpus_id!r}", self.path, field="id"
            )
        return self.docs(np.array([row]))[0]

    def ids_at(self, rows: np.ndarray) -> list[str]:
        """Document ids at these rows (in order)."""
        return self._columns["id"].take(np.asarray(rows, dtype=np.int64))

    def docs(self, rows: np.ndarray, *, text: bool = True) -> list[Doc]:
        """Documents at these rows (in order). With ``text=False`` only ids are filled (cheap)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return []
        cols = self._columns
        ids = cols["id"].take(rows)
        if not text:
            return [Doc(id=i) for i in ids]
        texts = cols["text"].take(rows)
        n = len(rows)
        titles = cols["title"].take(rows) if self._has("title") else [""] * n
        images = cols["image"].take(rows) if self._has("image") else [""] * n
        if self._has("extra"):
            extras = [json.loads(e) if e else {} for e in cols["extra"].take(rows)]
            return [
                Doc(id=a, text=b, title=c, image=d, extra=e)
                for a, b, c, d, e in zip(ids, texts, titles, images, extras)
            ]
        return [Doc(id=a, text=b, title=c, image=d) for a, b, c, d in zip(ids, texts, titles, images)]

    def __iter__(self) -> Iterator[Doc]:
        for start in range(0, len(self), 8192):
            yield from self.docs(np.arange(start, min(start + 8192, len(self))))


# ---------------------------------------------------------------------------------------------------------
# Reading corpus sources


def read_merlin_metadata(corpus_dir: str | Path) -> dict[str, Any]:
    """Read and check a NeMo corpus directory's ``merlin_metadata.json``.

    Raises:
        DataError: the file is missing, is not valid JSON, is not an object, or lacks a string ``class`` or a
            non-empty string ``corpus_id``; optional instructions must be strings.
    """
    path = Path(corpus_dir) / MERLIN_METADATA
    expected = 'expected a JSON object such as {"class": "TextQADataset", "corpus_id": "wiki"}'
    if not path.is_file():
        raise DataError(f"corpus directory has no {MERLIN_METADATA}; {expected}", path)
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError("not valid UTF-8; expected UTF-8 JSON", path) from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"invalid JSON: {err.msg} (column {err.colno}); {expected}", path, err.lineno
        ) from None
    if not isinstance(meta, dict):
        raise DataError(f"got {jtype(meta)}; {expected}", path, 1)
    if not isinstance(meta.get("corpus_id"), str) or not meta["corpus_id"].strip():
        what = "missing" if "corpus_id" not in meta else f"got {jtype(meta['corpus_id'])}"
        raise DataError(f"{what}; expected the corpus id as a non-empty string", path, 1, "corpus_id")
    if not isinstance(meta.get("class"), str):
        what = "missing" if "class" not in meta else f"got {jtype(meta['class'])}"
        raise DataError(
            f"{what}; expected the dataset class name as a string, e.g. TextQADataset", path, 1, "class"
        )
    for key in ("query_instruction", "passage_instruction", "task_type"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], str):
            raise DataError(f"got {jtype(meta[key])}; expected a string", path, 1, key)
    return meta


def _corpus_files(path: Path, corpus_id: str | None) -> _CorpusFiles:
    problem = path_problem(path)
    if problem == "not found" or (problem is not None and not path.is_dir()):
        what = "corpus not found" if problem == "not found" else problem
        raise DataError(f"{what}; expected a corpus directory or a .jsonl/.parquet file", path)
    if path.is_file():
        if path.suffix not in CORPUS_SUFFIXES:
            raise DataError(
                f"unsupported corpus file type {path.suffix!r}; expected .jsonl, .json or .parquet", path
            )
        return _CorpusFiles(path, corpus_id or path.stem, {}, [path], [path])
    if (path / MERLIN_METADATA).is_file() or not (path / "corpus.jsonl").is_file():
        meta = read_merlin_metadata(path)
        # each real directory once: a symlink loop inside a corpus directory cannot repeat its files
        files = sorted(
            walk_once(
                path,
                lambda p: p.suffix in CORPUS_SUFFIXES and p.name != MERLIN_METADATA if p.is_file() else None,
            )
        )
        if not files:
            raise DataError(
                "corpus directory has no data files; expected *.parquet or *.jsonl with id and text", path
            )
        return _CorpusFiles(path, meta["corpus_id"], meta, files, [path / MERLIN_METADATA, *files])
    beir = path / "corpus.jsonl"  # BEIR layout
    return _CorpusFiles(path, corpus_id or path.name, {}, [beir], [beir])


def load_corpus(
    path: str | Path, *, cache_dir: str | Path | None = None, corpus_id: str | None = None
) -> Corpus:
    """Load a corpus, converting it to a memory-mapped Arrow cache the first time.

    Args:
        path: a NeMo corpus directory (``merlin_metadata.json`` plus ``*.parquet``/``*.jsonl`` files with
            ``id`` and ``text`` columns, optional ``title``/``image``), a BEIR dataset directory (its
            ``corpus.jsonl``: ``_id``, ``title``, ``text``), or one ``.jsonl``/``.parquet`` file.
        cache_dir: where conversions are cached (default :func:`default_cache_dir`).
        corpus_id: id for sources without metadata (default: BEIR directory name or file stem).

    Returns:
        The :class:`Corpus`. A row's fields other than id, text, title and image (BEIR ``metadata``,
        extra Parquet columns) are kept in each :class:`Doc`'s ``extra`` (see :func:`densetune.data.docrows.extra_json`).

    Raises:
        DataError: missing/bad ``merlin_metadata.json``, missing columns, bad rows (every bad row is listed
            in :class:`CorpusError`), or duplicate document ids.
    """
    path = Path(path)
    files = _corpus_files(path, corpus_id)
    cut = _Cut.from_env(files)
    key_files = files.key_files + (cut.qrels_files if cut else [])
    key = cache_key("corpus", str(path.resolve()), files.corpus_id, fingerprint(key_files))
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / "corpora" / key
    if not (final / "meta.json").is_file():
        root.joinpath("corpora").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=root / "corpora"))
        try:
            _convert_corpus(files, tmp, cut)
            publish_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads((final / "meta.json").read_text())
    if cut is not None:
        cut.announce(files, meta)
    return Corpus.open(
        final / "docs.arrow", meta["corpus_id"], meta["metadata"], path, index_dir=final, key=key
    )


@dataclass
class _Cut:
    """``DENSETUNE_MAX_CORPUS=N`` (:mod:`densetune.caps`): a corpus keeps its first N rows and every
    document its BEIR directory's qrels judge (capped by ``DENSETUNE_MAX_QUERIES``), in corpus order, so the
    commands that train or evaluate on those qrels find their documents."""

    first: int
    judged: pa.Array
    qrels_files: list[Path]

    @classmethod
    def from_env(cls, files: _CorpusFiles) -> _Cut | None:
        first = env_cap(MAX_CORPUS)
        if first is None:
            return None
        beir = files.data_files == [files.path / "corpus.jsonl"]
        qrels_files = sorted((files.path / "qrels").glob("*.tsv")) if beir else []
        judged = sorted({d for f in qrels_files for docs in read_qrels(f).values() for d in docs})
        return cls(first, pa.array(judged, type=pa.string()), qrels_files)

    def rows(self, table: pa.Table, start: int) -> pa.Table:
        """The rows of ``table`` (rows ``start..`` of the corpus) that are kept."""
        head = np.arange(start, start + table.num_rows) < self.first
        return table.filter(pc.or_(pa.array(head), pc.is_in(table.column("id"), value_set=self.judged)))

    def announce(self, files: _CorpusFiles, meta: dict[str, Any]) -> None:
        judged = f" and the {len(self.judged)} its qrels judge" if self.qrels_files else ""
        notice(
            f"{MAX_CORPUS}={self.first}: corpus {files.path} keeps {meta['n']} of its {meta['source_rows']} "
            f"documents (the first {self.first}{judged})"
        )


def _convert_corpus(files: _CorpusFiles, out: Path, cut: _Cut | None = None) -> None:
    errors: list[DataError] = []
    read = 0  # source rows so far (every row is read and checked, kept or not)

    def batches() -> Iterator[pa.Table]:
        nonlocal read
        for f in files.data_files:
            for table in parquet_batches(f, errors) if f.suffix == ".parquet" else jsonl_batches(f, errors):
                start, read = read, read + table.num_rows
                yield table if cut is None else cut.rows(table, start)

    n = write_table(out / "docs.arrow", batches(), DOC_SCHEMA)
    table = open_table(out / "docs.arrow")
    index, duplicates = IdIndex.build(Column(table.column("id")))
    source = files.data_files[0] if len(files.data_files) == 1 else files.path
    for first, dup in duplicates[:100]:
        doc_id = table.column("id")[dup].as_py()
        errors.append(
            DataError(
                f"duplicate document id {doc_id!r} (rows {first} and {dup}); expected each id once per corpus",
                source,
                field="id",
            )
        )
    if errors:
        raise CorpusError(errors)
    if n == 0:
        raise DataError("corpus has no documents; expected rows with id and text", files.path)
    index.save(out)
    meta = {"corpus_id": files.corpus_id, "metadata": files.metadata, "n": n, "source": str(files.path)}
    meta["source_rows"] = read
    (out / "meta.json").write_text(json.dumps(meta))


def inline_corpus(arrow_path: Path) -> Corpus:
    """The documents of inline training data (``id, text, title, image, extra``), memory-mapped, as a Corpus."""
    return Corpus.open(arrow_path, INLINE_CORPUS_ID)
