"""Write Examples in a training-data format (``densetune convert`` and ``mine`` / ``score`` write with these).

Output formats and what each cannot carry (left out, with a warning giving counts):

- ``inline`` (NeMo Automodel inline JSONL): ``question_id``, ``query``, ``pos_doc``/``neg_doc`` as strings,
  or ``{"text", "id", "title", "image", ...extra}`` objects when a document has more than text. Loses
  teacher scores, type, prompt, category, instructions, history, answers; task becomes the file stem.
- ``flag`` (FlagEmbedding JSONL): ``query``, ``pos``, ``neg`` (documents rendered with
  :func:`~densetune.data.corpus.doc_text`, title + text), ``pos_scores``, ``neg_scores``, ``prompt``,
  ``type``, ``category``. Loses query and document ids, separate titles, document ``extra`` fields,
  instructions, history, answers.
- ``tevatron`` (JSONL): ``query_id``, ``query``, ``positive_passages``/``negative_passages`` of
  ``{docid, title, text}``. Loses scores, type, prompt, category, instructions, history, answers.
- ``corpus-id`` (NeMo Automodel corpus-id JSON): ``OUT`` plus one corpus directory per corpus beside it
  (``merlin_metadata.json`` + ``corpus.parquet`` with ``id, text, title, image``), holding the documents the
  examples use. Inline examples go to a corpus named after their task. Loses scores, type, prompt,
  category, history, answers, and document ``extra`` fields.

Every format carries ``Example.extra`` (the fields a record's own format does not read, BEIR query
metadata) as top-level record fields, except a field whose name the output format reads itself (``pos`` in
a flag output, say), which is counted and left out. Examples without a positive (LLM-Embedder history rows)
cannot be written in any of these formats and are counted and left out.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from densetune.data.corpus import MERLIN_METADATA, doc_text
from densetune.data.jsonrecords import READ_FIELDS
from densetune.data.records import INLINE_CORPUS_ID, Doc, Example, text_doc_id
from densetune.errors import DataError
from densetune.paths import atomic_path, tmp_path, write_text_atomic

logger = logging.getLogger("densetune.data")

WRITE_FORMATS = ("inline", "corpus-id", "flag", "tevatron")
_CORPUS_SCHEMA = pa.schema([(n, pa.string()) for n in ("id", "text", "title", "image")])
# what each format cannot carry (Example attributes; a warning counts the examples that had them set)
_PASSAGE_FORMATS_LOSE = (
    "pos_scores",
    "neg_scores",
    "type",
    "prompt",
    "category",
    "query_instruction",
    "passage_instruction",
    "history",
    "answers",
)
_LOST = {
    "inline": _PASSAGE_FORMATS_LOSE,
    "tevatron": _PASSAGE_FORMATS_LOSE,
    "flag": ("query_instruction", "passage_instruction", "history", "answers"),
    "corpus-id": ("pos_scores", "neg_scores", "type", "prompt", "category", "history", "answers"),
}

# formats whose documents are plain text or fixed columns: a document's other fields cannot go along
_DOC_EXTRA_LOST = ("flag", "corpus-id")
# the fields each output format's reader reads: an Example.extra field of that name cannot go along
_OWN_FIELDS = {
    "inline": READ_FIELDS["nemo-inline"],
    "flag": READ_FIELDS["flag"],
    "tevatron": READ_FIELDS["tevatron"],
    "corpus-id": READ_FIELDS["nemo-corpus-id"],
}


def _is_set(example: Example, name: str) -> bool:
    value = getattr(example, name)
    if name == "type":
        return value != "retrieval"
    return bool(value) if value is not None else False


def _check_texts(example: Example) -> None:
    if example.corpus_id == INLINE_CORPUS_ID:
        return
    for name, docs in (("positives", example.positives), ("negatives", example.negatives)):
        for j, d in enumerate(docs):
            if d.id and not (d.text or d.title or d.image):  # an id-only document: never resolved
                raise DataError(
                    f"document {d.id!r} has no text; resolve documents before writing "
                    "(iter_examples(resolve=True) or ExampleStore.resolve)",
                    example.source or None,
                    field=f"{name}[{j}]",
                )


def _inline_doc(d: Doc) -> Any:
    if d.id in ("", text_doc_id(d.text)) and not (d.title or d.image or d.extra):
        return d.text
    out: dict[str, Any] = {"text": d.text}
    if d.id and d.id != text_doc_id(d.text):
        out["id"] = d.id
    if d.title:
        out["title"] = d.title
    if d.image:
        out["image"] = d.image
    out.update({k: v for k, v in d.extra.items() if k not in out})
    return out


def _tevatron_doc(d: Doc) -> dict[str, Any]:
    out: dict[str, Any] = {"docid": d.id or text_doc_id(d.text), "title": d.title, "text": d.text}
    if d.image:
        out["image"] = d.image
    out.update({k: v for k, v in d.extra.items() if k not in out})
    return out


def _inline_record(ex: Example) -> dict[str, Any]:
    return {
        "question_id": ex.query_id,
        "query": ex.query,
        "pos_doc": [_inline_doc(d) for d in ex.positives],
        "neg_doc": [_inline_doc(d) for d in ex.negatives],
    }


def _flag_record(ex: Example) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "query": ex.query,
        "pos": [doc_text(d) for d in ex.positives],
        "neg": [doc_text(d) for d in ex.negatives],
    }
    if ex.pos_scores is not None:
        rec["pos_scores"] = ex.pos_scores
    if ex.neg_scores is not None:
        rec["neg_scores"] = ex.neg_scores
    if ex.prompt:
        rec["prompt"] = ex.prompt
    if ex.category:
        rec["category"] = ex.category
    if ex.type != "retrieval":
        rec["type"] = ex.type
    return rec


def _tevatron_record(ex: Example) -> dict[str, Any]:
    return {
        "query_id": ex.query_id,
        "query": ex.query,
        "positive_passages": [_tevatron_doc(d) for d in ex.positives],
        "negative_passages": [_tevatron_doc(d) for d in ex.negatives],
    }


_RECORDS = {"inline": _inline_record, "flag": _flag_record, "tevatron": _tevatron_record}


class _CorpusOut:
    """One corpus directory being written: documents deduplicated by id, streamed to Parquet."""

    def __init__(self, corpus_id: str, directory: Path, example: Example):
        if directory.exists() and any(
            p.name not in (MERLIN_METADATA, "corpus.parquet", "corpus.parquet.tmp")
            for p in directory.iterdir()
        ):
            raise DataError(
                f"corpus directory for {corpus_id!r} already exists and holds other files; write to another directory",
                directory,
            )
        directory.mkdir(parents=True, exist_ok=True)
        self.corpus_id = corpus_id
        self.directory = directory
        self.seen: dict[str, int] = {}
        self.rows: dict[str, list[str]] = {n: [] for n in _CORPUS_SCHEMA.names}
        # written under a temporary name and renamed by close(): an interrupted convert leaves no half file
        self.final = directory / "corpus.parquet"
        self.writer = pq.ParquetWriter(tmp_path(self.final), _CORPUS_SCHEMA)
        self.meta: dict[str, str] = {"class": "TextQADataset", "corpus_id": corpus_id}
        if example.query_instruction:
            self.meta["query_instruction"] = example.query_instruction
        if example.passage_instruction:
            self.meta["passage_instruction"] = example.passage_instruction

    def add(self, d: Doc, example: Example) -> str:
        doc_id = d.id or text_doc_id(d.text)
        digest = hash((d.text, d.title, d.image))
        if doc_id in self.seen:
            if self.seen[doc_id] != digest:
                raise DataError(
                    f"document id {doc_id!r} has two different texts in corpus {self.corpus_id!r}; expected one text per id",
                    example.source or None,
                )
            return doc_id
        self.seen[doc_id] = digest
        for name, value in zip(_CORPUS_SCHEMA.names, (doc_id, d.text, d.title, d.image)):
            self.rows[name].append(value)
        if len(self.rows["id"]) >= 65536:
            self.flush()
        return doc_id

    def flush(self) -> None:
        if self.rows["id"]:
            self.writer.write_table(pa.table(self.rows, schema=_CORPUS_SCHEMA))
            self.rows = {n: [] for n in _CORPUS_SCHEMA.names}

    def discard(self) -> None:
        """Drop an unfinished corpus file (after an error); a finished one stays."""
        if tmp_path(self.final).exists():
            self.writer.close()
            tmp_path(self.final).unlink()

    def close(self) -> None:
        self.flush()
        self.writer.close()
        os.replace(tmp_path(self.final), self.final)
        write_text_atomic(
            self.directory / MERLIN_METADATA, json.dumps(self.meta, ensure_ascii=False, indent=1) + "\n"
        )


def _corpus_name(example: Example, default: str) -> str:
    if example.corpus_id != INLINE_CORPUS_ID:
        return example.corpus_id
    return re.sub(r"[^A-Za-z0-9._-]+", "_", example.task).strip("._") or default


def _write_corpus_id(examples: Iterable[Example], path: Path, counts: Counter) -> int:
    corpora: dict[str, _CorpusOut] = {}
    n = 0
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, suffix=".data", delete=False
    ) as data:
        try:
            for ex in examples:
                if not _count(ex, "corpus-id", counts):
                    continue
                cid = _corpus_name(ex, path.stem)
                if cid not in corpora:
                    corpora[cid] = _CorpusOut(cid, path.parent / cid, ex)
                out = corpora[cid]
                record = {
                    "question_id": ex.query_id,
                    "question": ex.query,
                    "corpus_id": cid,
                    "pos_doc": [{"id": out.add(d, ex)} for d in ex.positives],
                    "neg_doc": [{"id": out.add(d, ex)} for d in ex.negatives],
                }
                record = _with_extra(record, ex, "corpus-id", counts)
                data.write((",\n    " if n else "    ") + json.dumps(record, ensure_ascii=False, default=str))
                n += 1
            for out in corpora.values():
                out.close()
            data.flush()
            _check_some(n, path, counts)
            with atomic_path(path) as tmp:
                with open(tmp, "w", encoding="utf-8") as f, open(data.name, encoding="utf-8") as body:
                    entries = ",\n".join(f"    {json.dumps({'path': cid})}" for cid in corpora)
                    f.write('{\n  "corpus": [\n' + entries + '\n  ],\n  "data": [\n')
                    shutil.copyfileobj(body, f)
                    f.write("\n  ]\n}\n")
        finally:
            os.unlink(data.name)
            for out in corpora.values():
                out.discard()
    return n


def _check_some(n: int, path: Path, counts: Counter) -> None:
    """An output without a single example is not written (a 0-byte training file only fails later)."""
    if n == 0:
        left_out = ", ".join(f"{name} ({c})" for name, c in counts.items())
        raise DataError(
            "no examples to write"
            + (f" (left out: {left_out})" if left_out else " (the input has none)")
            + "; nothing written",
            path,
        )


def _count(ex: Example, fmt: str, counts: Counter) -> bool:
    """Tally what ``fmt`` drops from ``ex``; False when the example cannot be written at all."""
    _check_texts(ex)
    if not ex.positives:
        counts["examples without a positive (not written)"] += 1
        return False
    for name in _LOST[fmt]:
        if _is_set(ex, name):
            counts[name] += 1
    if fmt in _DOC_EXTRA_LOST and any(d.extra for d in (*ex.positives, *ex.negatives)):
        counts["document extra fields"] += 1
    return True


def _with_extra(record: dict[str, Any], ex: Example, fmt: str, counts: Counter) -> dict[str, Any]:
    """``record`` plus the example's extra fields; one whose name ``fmt`` reads itself is counted instead."""
    own = _OWN_FIELDS[fmt]
    for key, value in ex.extra.items():
        if key in own or key in record:
            counts[f"extra field {key!r} (a field of this format)"] += 1
        else:
            record[key] = value
    return record


def _write_jsonl(examples: Iterable[Example], f: TextIO, fmt: str, counts: Counter) -> int:
    make = _RECORDS[fmt]
    n = 0
    for ex in examples:
        if _count(ex, fmt, counts):
            f.write(
                json.dumps(_with_extra(make(ex), ex, fmt, counts), ensure_ascii=False, default=str) + "\n"
            )
            n += 1
    return n


def write_examples(examples: Iterable[Example], path: str | Path, fmt: str) -> int:
    """Write Examples to ``path`` in ``fmt``, atomically; see the module docstring for what each format keeps.

    Args:
        examples: Examples with texts (resolve id-only documents first).
        path: output file (for ``corpus-id``, corpus directories are created beside it).
        fmt: ``inline``, ``corpus-id``, ``flag`` or ``tevatron``.

    Returns:
        The number of examples written.

    Raises:
        ValueError: unknown ``fmt``.
        DataError: a document without text, a document id with two texts (corpus-id), or an existing
            non-empty corpus directory in the way (corpus-id).
    """
    if fmt not in WRITE_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {', '.join(WRITE_FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    if fmt == "corpus-id":
        n = _write_corpus_id(examples, path, counts)
    else:
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                n = _write_jsonl(examples, f, fmt, counts)
            _check_some(n, path, counts)
    if counts:
        lost = ", ".join(f"{name} ({count} examples)" for name, count in counts.items())
        logger.warning("%s: the %s format cannot carry: %s", path, fmt, lost)
    return n


# ---------------------------------------------------------------------------------------------------------
# densetune convert
