"""The canonical records every reader produces and every later stage consumes: Doc, Example, Group."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Example.type values (BGE-EN-ICL); "retrieval" is the default everywhere.
EXAMPLE_TYPES = ("retrieval", "symmetric_sts", "symmetric_clustering", "symmetric_class", "only_1neg")

INLINE_CORPUS_ID = "__inline__"


@dataclass
class Doc:
    """One document (passage).

    Attributes:
        id: corpus document id; "" when the source gave none (inline text). Readers of inline data may
            fill it with :func:`densetune.data.records.text_doc_id` so duplicate masking works.
        text: the passage text ("" until resolved when the document is referenced by id only).
        title: optional title.
        image: path of an image for multimodal data, or "".
        extra: any other fields of the source record, kept verbatim.
    """

    id: str = ""
    text: str = ""
    title: str = ""
    image: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Example:
    """One training or evaluation record: a query with its positive and negative documents.

    Attributes:
        query_id: stable id of the query (source id, or ``"{file basename}:{index}"``).
        query: the query text.
        positives: relevant documents (at least one for training).
        negatives: hard negatives, in file order.
        pos_scores / neg_scores: teacher scores aligned with positives / negatives, or None.
        task: dataset or task name (LLM-Embedder task, NeMo corpus, parent directory, ...).
        type: one of :data:`EXAMPLE_TYPES`.
        prompt: task instruction (BGE-EN-ICL ``prompt``), or "".
        category: the row's label for clustering / classification data (BGE-EN-ICL ``category``), or "".
        query_instruction / passage_instruction: dataset instructions from corpus metadata, or "".
        corpus_id: corpus the document ids refer to, or ``"__inline__"``.
        history: LLM-Embedder history rows (become negatives with teacher scores), or [].
        answers: LLM-Embedder answers, or [].
        source: ``"path:line"`` of the record, for error messages.
        extra: the record's fields its format does not read (a misspelt ``negs``, a ``source`` column, BEIR
            query ``metadata``), kept so that ``densetune convert`` writes them back; {} when none. Not used
            for training.
    """

    query_id: str
    query: str
    positives: list[Doc] = field(default_factory=list)
    negatives: list[Doc] = field(default_factory=list)
    pos_scores: list[float] | None = None
    neg_scores: list[float] | None = None
    task: str = ""
    type: str = "retrieval"
    prompt: str = ""
    category: str = ""
    query_instruction: str = ""
    passage_instruction: str = ""
    corpus_id: str = INLINE_CORPUS_ID
    history: list[Doc] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Group:
    """A training group: one query, its selected positive first, then n-1 negatives.

    Attributes:
        query: query text (no prefix or instruction applied yet).
        query_id: id of the query.
        docs: ``[positive, negative_1, ...]``, texts resolved.
        scores: teacher scores aligned with ``docs``, or None.
        task, type, prompt, category, query_instruction, passage_instruction: copied from the Example.
    """

    query: str
    query_id: str
    docs: list[Doc]
    scores: list[float] | None = None
    task: str = ""
    type: str = "retrieval"
    prompt: str = ""
    category: str = ""
    query_instruction: str = ""
    passage_instruction: str = ""


def text_doc_id(text: str) -> str:
    """Stable id for a document that came without one, derived from its text.

    Inline data (NeMo inline JSONL, FlagEmbedding, SBERT lists) carries no document ids; giving equal
    texts equal ids lets the loss mask in-batch duplicates for inline data too.
    """
    import hashlib

    return "txt-" + hashlib.md5(text.encode("utf-8")).hexdigest()[:16]


def doc_id_to_int64(doc_id: str) -> int:
    """NeMo Automodel's stable 63-bit integer for a document id string.

    MD5 of the UTF-8 bytes, first 8 bytes read little-endian, masked to 63 bits (non-negative int64).
    """
    import hashlib

    digest = hashlib.md5(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
