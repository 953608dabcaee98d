"""Collate: turn a batch of groups (NeMo-style dicts or :class:`~densetune.data.records.Group`) into tensors.

One collator per seed system, each with that seed's name, signature and output keys, so a user of the seed
switches by changing an import:

- :class:`BiEncoderCollator` (alias :data:`RetrievalBiencoderCollator`), NeMo Automodel: queries and
  documents tokenised separately, ``q_*`` / ``d_*`` tensors, ``labels``, ``passage_doc_ids``. The default
  collator of ``densetune train``.
- :class:`CrossEncoderCollator`, NeMo Automodel: one ``question:{query} \\n \\n passage:{passage}`` row per
  (query, document) pair.
- :class:`RetrievalDataCollator`, FlagEmbedding LLM-Embedder: ``query`` / ``key`` encodings, ``key_mask`` for
  groups of different sizes, ``teacher_scores``; ``cross=True`` gives (query, key) pair encodings.
- :class:`SameEmbedCollator`, FlagEmbedding BGE-EN-ICL: prompted queries with in-context examples drawn from
  the batch, EOS appended and left padding for last-token pooling on decoder models; the seed's
  ``query`` / ``passage`` / ``messages`` dict, or (``output="train"``) the bi-encoder layout below.

Batch layout shared by the bi-encoders (B queries, n documents per query, positive first)::

    q_input_ids, q_attention_mask   [B, Lq]
    d_input_ids, d_attention_mask   [B*n, Lp]   rows i*n .. i*n+n-1 are query i's documents
    labels                          [B]         zeros: the positive is column 0 of each group
    passage_doc_ids                 [B*n] int64 only when every document has a non-empty id
    teacher_scores                  [B, n]      only when every group has teacher scores
    in_batch_negatives              False       SameEmbedCollator, symmetric class / clustering batches only:
                                                score each query against its own group
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding

from densetune.data.corpus import doc_text
from densetune.data.groups import derive_seed
from densetune.data.prompts import (
    LLM_SPECIAL_TOKENS,
    PromptFormatter,
    build_icl_query,
    format_passage,
    sample_icl_examples,
)
from densetune.data.records import EXAMPLE_TYPES, Doc, Group, doc_id_to_int64

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerBase

__all__ = [
    "BiEncoderCollator",
    "CrossEncoderCollator",
    "RetrievalBiencoderCollator",
    "RetrievalDataCollator",
    "SameEmbedCollator",
    "feature_to_group",
    "group_to_features",
]

DEFAULT_RERANK_TEMPLATE = "question:{query} \n \n passage:{passage}"


# ---------------------------------------------------------------------------------------------------------
# Inputs: Groups and NeMo-style dicts are one thing to the collators
# ---------------------------------------------------------------------------------------------------------


def group_to_features(group: Group) -> dict[str, Any]:
    """A :class:`Group` as the NeMo Automodel dataset item the seed collators read.

    Returns:
        ``{"question", "doc_text", "doc_image", "doc_id", "query_instruction", "passage_instruction",
        "teacher_scores", "query_id", "task", "type", "prompt"}``; lists are aligned with ``group.docs``
        (positive first); a document's text is ``"{title} {text}"`` when it has a title
        (:func:`densetune.data.corpus.doc_text`, the BEIR convention); ``teacher_scores`` is ``group.scores``
        (None without scores).
    """
    docs = group.docs
    return {
        "question": group.query,
        "doc_text": [doc_text(d) for d in docs],
        "doc_image": [d.image for d in docs],
        "doc_id": [d.id for d in docs],
        "query_instruction": group.query_instruction,
        "passage_instruction": group.passage_instruction,
        "teacher_scores": group.scores,
        "query_id": group.query_id,
        "task": group.task,
        "type": group.type,
        "prompt": group.prompt,
        "category": group.category,
    }


def feature_to_group(feature: Group | Mapping[str, Any]) -> Group:
    """The inverse of :func:`group_to_features`; also reads LLM-Embedder (``query``/``key``) dicts.

    Accepted keys: ``question`` or ``query``; ``doc_text`` or ``key`` or ``docs`` (texts or :class:`Doc`);
    optional ``doc_id``, ``doc_image``, ``teacher_scores`` (or ``scores``), ``query_id``, ``task``, ``type``,
    ``prompt``, ``category``, ``query_instruction``, ``passage_instruction``.

    Raises:
        ValueError: no query or no documents, naming the keys found.
    """
    if isinstance(feature, Group):
        return feature
    if not isinstance(feature, Mapping):
        raise ValueError(f"expected a Group or a dict per batch item, got {type(feature).__name__}")
    query = feature.get("question", feature.get("query"))
    docs_in = feature.get("doc_text", feature.get("key", feature.get("docs")))
    if query is None or docs_in is None:
        raise ValueError(
            "a batch item needs a query ('question' or 'query') and documents ('doc_text', 'key' or 'docs'); "
            f"got keys {sorted(feature)}"
        )
    if isinstance(docs_in, str):
        docs_in = [docs_in]
    ids = feature.get("doc_id") or [""] * len(docs_in)
    images = feature.get("doc_image") or [""] * len(docs_in)
    docs = [
        d
        if isinstance(d, Doc)
        else Doc(id=str(i or ""), text=str(d), image=img if isinstance(img, str) else "")
        for d, i, img in zip(docs_in, ids, images)
    ]
    scores = feature.get("teacher_scores", feature.get("scores"))
    return Group(
        query=str(query),
        query_id=str(feature.get("query_id", "") or ""),
        docs=docs,
        scores=None if scores is None else [float(s) for s in scores],
        task=str(feature.get("task", "") or ""),
        type=str(feature.get("type", "retrieval") or "retrieval"),
        prompt=str(feature.get("prompt", "") or ""),
        category=str(feature.get("category", "") or ""),
        query_instruction=str(feature.get("query_instruction", "") or ""),
        passage_instruction=str(feature.get("passage_instruction", "") or ""),
    )


def _as_features(item: Group | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(item, Group):
        return group_to_features(item)
    if isinstance(item, Mapping):
        return item
    raise ValueError(f"expected a Group or a dict per batch item, got {type(item).__name__}")


def _check_group_sizes(sizes: Sequence[int], what: str = "documents") -> int:
    """The common group size; a ValueError naming every size otherwise (the loss reshapes to [B, n])."""
    if not sizes:
        raise ValueError("cannot collate an empty batch")
    if min(sizes) == 0:
        raise ValueError(f"batch item {list(sizes).index(0)} has no {what}; every group needs a positive")
    counts = Counter(sizes)
    if len(counts) > 1:
        detail = ", ".join(f"{n} {what} in {c} group(s)" for n, c in sorted(counts.items()))
        first_odd = next(i for i, s in enumerate(sizes) if s != sizes[0])
        raise ValueError(
            f"all groups in a batch must have the same number of {what}; got {detail} "
            f"(item 0 has {sizes[0]}, item {first_odd} has {sizes[first_odd]}). Use one n_passages / "
            "eval_negative_size for the whole dataset"
        )
    return sizes[0]


def _teacher_scores(features: Sequence[Mapping[str, Any]], n: int) -> torch.Tensor | None:
    """[B, n] float32 when every item has n scores, else None."""
    rows = [f.get("teacher_scores") for f in features]
    if any(r is None for r in rows):
        return None
    if any(len(r) != n for r in rows):
        sizes = sorted({len(r) for r in rows})
        raise ValueError(f"teacher_scores must have one score per document ({n}); got lengths {sizes}")
    return torch.tensor(rows, dtype=torch.float32)


def _passage_doc_ids(features: Sequence[Mapping[str, Any]]) -> torch.Tensor | None:
    """[B*n] int64 hashes of the document ids, or None when any document has no id."""
    flat: list[str] = []
    for f in features:
        ids = f.get("doc_id")
        if not ids:
            return None
        flat.extend(ids)
    if not all(flat):
        return None
    return torch.tensor([doc_id_to_int64(str(s)) for s in flat], dtype=torch.long)


def _doc_id_str_to_int64(doc_id: str) -> int:
    """Stable 63-bit int for corpus doc id strings (NeMo Automodel's name; see :func:`doc_id_to_int64`)."""
    return doc_id_to_int64(doc_id)


def _unpack_doc_values(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (query, document): ``[{"input_ids": [[1, 2], [3, 4]]}]`` -> ``[{"input_ids": [1, 2]}, ...]``.

    NeMo Automodel's helper: every value of a feature is a list with one entry per document.
    """
    rows: list[dict[str, Any]] = []
    for f in features:
        keys = list(f)
        for i in range(len(f[keys[0]])):
            rows.append({k: f[k][i] for k in keys})
    return rows


# ---------------------------------------------------------------------------------------------------------
# NeMo Automodel: bi-encoder and cross-encoder
# ---------------------------------------------------------------------------------------------------------


class BiEncoderCollator:
    """Tokenise a batch of groups for bi-encoder training (NeMo Automodel's ``BiEncoderCollator``).

    Queries get ``query_prefix`` and documents ``passage_prefix``, joined with a space when non-empty
    (``"query:"`` + ``"what is bm25"`` -> ``"query: what is bm25"``). With ``use_dataset_instruction`` each
    item's ``query_instruction`` / ``passage_instruction`` (corpus metadata) is joined the same way when
    non-empty and the static prefixes are ignored. Queries and documents are tokenised in one call each,
    truncated at ``q_max_len`` / ``p_max_len`` and padded to the longest in the batch (rounded up to
    ``pad_to_multiple_of``). ``token_type_ids`` are never returned (single-segment inputs: they would be all
    zeros, the models' default), as in the seed.

    Token cache (densetune addition): the token ids of every text seen are kept, up to ``cache_tokens``
    tokens per truncation length in each process (each DataLoader worker has its own), so a passage met
    again (a popular hard negative; every passage from the second epoch on) is only padded, not tokenised
    again. The tensors are exactly those of the uncached path; ``cache_tokens=0`` turns it off. Build the
    collator after any change to the tokenizer (added tokens): cached ids are not re-derived. With DataLoader
    workers pass ``persistent_workers=True``, or the workers, and their caches, are rebuilt every epoch.

    Args:
        tokenizer: a Hugging Face tokenizer.
        q_max_len: query token limit, special tokens included.
        p_max_len: document token limit, special tokens included.
        query_prefix: e.g. ``"query:"`` (E5 style).
        passage_prefix: e.g. ``"passage:"``.
        padding: ``True``/``"longest"`` (dynamic), ``"max_length"`` (pad to q/p_max_len) or
            ``False``/``"do_not_pad"`` (only when all lengths agree).
        pad_to_multiple_of: round the padded length up to a multiple of this (8 suits tensor cores).
        use_dataset_instruction: use the items' dataset instructions instead of the prefixes.
        cache_tokens: token budget of each token cache (int32 ids, keyed by a 16-byte digest of the text:
            about 4 bytes a token plus 250 a text, some 85 MiB at the default 2**24 for 256-token passages);
            texts beyond it are tokenised every time. 0 disables the cache.

    Inputs:
        A list of NeMo-style dicts (``question``, ``doc_text`` = [positive, negatives...], optional ``doc_id``,
        ``doc_image``, ``query_instruction``, ``passage_instruction``, ``teacher_scores``) or of
        :class:`Group` objects, mixed freely. Every item must have the same number of documents.

    Returns:
        ``q_input_ids``, ``q_attention_mask`` [B, Lq]; ``d_input_ids``, ``d_attention_mask`` [B*n, Lp] (each
        query's documents contiguous, positive first); ``labels`` zeros [B] (long); ``passage_doc_ids`` [B*n]
        int64 (:func:`~densetune.data.records.doc_id_to_int64`) when every document has a non-empty id;
        ``teacher_scores`` [B, n] float32 when every item has scores; ``task`` (str) when every item has the
        same non-empty task (same-task batches: per-task loss settings read it).

    Raises:
        ValueError: an empty batch, or items with different numbers of documents (naming the sizes).

    Example:
        >>> collate = BiEncoderCollator(tokenizer, q_max_len=64, p_max_len=256, query_prefix="query:",
        ...                             passage_prefix="passage:", pad_to_multiple_of=8)
        >>> batch = collate([{"question": "what is bm25", "doc_text": ["BM25 is...", "TF-IDF is..."]}])
        >>> batch["d_input_ids"].shape[0]
        2
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        q_max_len: int = 512,
        p_max_len: int = 512,
        query_prefix: str = "",
        passage_prefix: str = "",
        padding: bool | str = True,
        pad_to_multiple_of: int | None = None,
        use_dataset_instruction: bool = False,
        *,
        cache_tokens: int = 1 << 24,
    ):
        for name, value in (("q_max_len", q_max_len), ("p_max_len", p_max_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if pad_to_multiple_of is not None and (
            not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1
        ):
            raise ValueError(
                f"pad_to_multiple_of must be a positive integer or None, got {pad_to_multiple_of!r}"
            )
        self.tokenizer = tokenizer
        self.q_max_len = q_max_len
        self.p_max_len = p_max_len
        self.query_prefix = query_prefix or ""
        self.passage_prefix = passage_prefix or ""
        self.padding = padding
        self.pad_to_multiple_of = pad_to_multiple_of
        self.use_dataset_instruction = use_dataset_instruction
        self.formatter = PromptFormatter(self.query_prefix, self.passage_prefix, use_dataset_instruction)
        if isinstance(cache_tokens, bool) or not isinstance(cache_tokens, int) or cache_tokens < 0:
            raise ValueError(f"cache_tokens must be an integer >= 0, got {cache_tokens!r}")
        self.cache_tokens = cache_tokens
        # A cache per truncation length: a text is cut at q_max_len as a query, at p_max_len as a passage.
        self._caches = {n: _TokenCache(cache_tokens) for n in {q_max_len, p_max_len}}

    def texts(self, batch: Sequence[Group | Mapping[str, Any]]) -> tuple[list[str], list[str], int]:
        """The query strings [B], document strings [B*n] and n, as the model will see them (prefixes applied)."""
        features = [_as_features(x) for x in batch]
        n = _check_group_sizes([len(f["doc_text"]) for f in features])
        fmt = self.formatter
        queries = [fmt.apply_query(f["question"], f.get("query_instruction") or "") for f in features]
        docs = [
            fmt.apply_passage(text, f.get("passage_instruction") or "")
            for f in features
            for text in f["doc_text"]
        ]
        return queries, docs, n

    def __call__(self, batch: Sequence[Group | Mapping[str, Any]]) -> dict[str, Any]:
        features = [_as_features(x) for x in batch]
        queries, docs, n = self.texts(features)
        out: dict[str, Any] = {}
        for prefix, texts, max_len in (("q_", queries, self.q_max_len), ("d_", docs, self.p_max_len)):
            enc = self._encode(texts, max_len)
            out.update({prefix + k: v for k, v in enc.items()})
        out["labels"] = torch.zeros(len(features), dtype=torch.long)
        doc_ids = _passage_doc_ids(features)
        if doc_ids is not None:
            out["passage_doc_ids"] = doc_ids
        scores = _teacher_scores(features, n)
        if scores is not None:
            out["teacher_scores"] = scores
        # Per-task loss settings need the batch's task; the items of a same-task batch share one.
        tasks = {f.get("task") or "" for f in features}
        if len(tasks) == 1 and "" not in tasks:
            out["task"] = tasks.pop()
        return out

    def _encode(self, texts: list[str], max_len: int) -> Mapping[str, torch.Tensor]:
        if not self.cache_tokens:
            # One call to the (Rust) fast tokenizer truncates, pads and makes the tensors.
            return self.tokenizer(
                texts,
                max_length=max_len,
                truncation=True,
                padding=self.padding,
                pad_to_multiple_of=self.pad_to_multiple_of,
                return_token_type_ids=False,
                return_tensors="pt",
            )
        ids = self._caches[max_len].lookup(texts, lambda missing: self._tokenize(missing, max_len))
        return _pad_ids(
            ids,
            pad_id=self.tokenizer.pad_token_id,
            side=self.tokenizer.padding_side,
            padding=self.padding,
            max_len=max_len,
            multiple=self.pad_to_multiple_of,
        )

    def _tokenize(self, texts: list[str], max_len: int) -> list[list[int]]:
        return self.tokenizer(
            texts,
            max_length=max_len,
            truncation=True,
            return_token_type_ids=False,
            return_attention_mask=False,
        )["input_ids"]


class _TokenCache:
    """Token ids of texts already tokenised (one truncation length), up to a budget of tokens.

    Keyed by a 128-bit BLAKE2 digest of the text, so the cache holds ids, not the texts (a million passages
    would otherwise keep gigabytes of strings alive). Filled until the budget is spent, then read-only: with
    random access every policy keeps about the same share of hits, and this one costs nothing per hit.
    """

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.tokens = 0
        self.ids: dict[bytes, np.ndarray] = {}

    def lookup(self, texts: Sequence[str], tokenize: Any) -> list[np.ndarray]:
        """Ids of each text: cached ones, the others from one ``tokenize(list_of_texts)`` call."""
        keys = [hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts]
        found = [self.ids.get(k) for k in keys]
        missing = {k: t for k, t, ids in zip(keys, texts, found) if ids is None}
        if not missing:
            return found  # type: ignore[return-value]
        new = {
            k: np.asarray(ids, dtype=np.int32) for k, ids in zip(missing, tokenize(list(missing.values())))
        }
        for k, ids in new.items():
            if self.tokens + len(ids) > self.max_tokens:
                break
            self.ids[k] = ids
            self.tokens += len(ids)
        return [ids if ids is not None else new[k] for k, ids in zip(keys, found)]


def _pad_ids(
    seqs: Sequence[np.ndarray],
    *,
    pad_id: int | None,
    side: str,
    padding: bool | str,
    max_len: int,
    multiple: int | None,
) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` [n, L] as the tokenizer pads them (same strategy, side, rounding)."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    if padding is True or padding == "longest":
        length = int(lengths.max())
    elif padding == "max_length":
        length = max_len
    elif padding is False or padding == "do_not_pad":
        if len(set(lengths.tolist())) > 1:
            raise ValueError(
                f"padding={padding!r} needs sequences of one length to make a tensor, got lengths "
                f"{sorted(set(lengths.tolist()))}; use padding=True"
            )
        length, multiple = int(lengths[0]), None
    else:
        raise ValueError(f"padding must be True, 'longest', 'max_length' or False, got {padding!r}")
    if multiple:
        length = -(-length // multiple) * multiple
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos_token)")
    positions = np.arange(length)
    if side == "left":
        mask = positions[None, :] >= (length - lengths)[:, None]
    else:
        mask = positions[None, :] < lengths[:, None]
    input_ids = np.full((len(seqs), length), pad_id, dtype=np.int64)
    # Row-major order of the mask's True cells is each row's tokens in order, for either side.
    input_ids[mask] = np.concatenate(seqs) if len(seqs) else np.zeros(0, np.int64)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(mask.astype(np.int64)),
    }


RetrievalBiencoderCollator = BiEncoderCollator
"""NeMo Automodel's YAML name for :class:`BiEncoderCollator`."""


class CrossEncoderCollator(DataCollatorWithPadding):
    """Pairs of (query, document) for cross-encoder (reranker) training, NeMo Automodel's collator.

    Each group of n documents becomes n rows, positive first, each the text
    ``prompt_template.format(query=..., passage=...)``, truncated at ``rerank_max_length`` tokens and padded
    (``pad_to_multiple_of`` of :class:`~transformers.DataCollatorWithPadding` applies). The loss reshapes the
    logits to ``(-1, n)`` and takes column 0 as the target.

    Args:
        rerank_max_length: token limit of a formatted pair, special tokens included.
        *args: :class:`~transformers.DataCollatorWithPadding` arguments (``tokenizer`` first).
        prompt_template: with ``{query}`` and ``{passage}`` fields.
        **kwargs: :class:`~transformers.DataCollatorWithPadding` keywords (``tokenizer``, ``padding``,
            ``pad_to_multiple_of``, ``return_tensors``); a stray ``args`` keyword (seed configs) is ignored.

    Inputs:
        Groups or NeMo-style dicts with ``doc_text`` lists (flattened here), or rows already flattened by the
        seed's cross-encoder dataset (``doc_text`` a string, optional ``num_labels``).

    Returns:
        A BatchEncoding: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer makes
        them) [B*n, L]; ``labels`` zeros [B] (long) for grouped input, zeros [num_labels] for flattened rows
        that carry ``num_labels``; ``teacher_scores`` [B, n] when every group has scores.

    Raises:
        ValueError: groups of different sizes in one batch, naming the sizes.
    """

    def __init__(
        self,
        rerank_max_length: int,
        *args: Any,
        prompt_template: str = DEFAULT_RERANK_TEMPLATE,
        **kwargs: Any,
    ):
        if not isinstance(rerank_max_length, int) or rerank_max_length < 1:
            raise ValueError(f"rerank_max_length must be a positive integer, got {rerank_max_length!r}")
        if "{query}" not in prompt_template or "{passage}" not in prompt_template:
            raise ValueError(
                f"prompt_template must contain {{query}} and {{passage}}, got {prompt_template!r}"
            )
        self.rerank_max_length = rerank_max_length
        self.prompt_template = prompt_template
        self.args = kwargs.pop("args", None)
        super().__init__(*args, **kwargs)

    def __call__(self, features: Sequence[Group | Mapping[str, Any]]) -> BatchEncoding:
        items = [_as_features(x) for x in features]
        if not items:
            raise ValueError("cannot collate an empty batch")
        grouped = not isinstance(items[0]["doc_text"], str)
        if grouped:
            n = _check_group_sizes([len(f["doc_text"]) for f in items])
            pairs = [(f["question"], doc) for f in items for doc in f["doc_text"]]
            num_labels: int | None = len(items)
        else:
            n = 1
            pairs = [(f["question"], f["doc_text"]) for f in items]
            num_labels = items[0].get("num_labels")
        texts = [self.prompt_template.format(query=q, passage=p) for q, p in pairs]
        batch = self.tokenizer(
            texts,
            max_length=self.rerank_max_length,
            truncation=True,
            padding=self.padding,
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_tensors=self.return_tensors,
        )
        if num_labels is not None:
            batch["labels"] = torch.zeros(int(num_labels), dtype=torch.long)
        if grouped:
            scores = _teacher_scores(items, n)
            if scores is not None:
                batch["teacher_scores"] = scores
        return batch


# ---------------------------------------------------------------------------------------------------------
# FlagEmbedding LLM-Embedder
# ---------------------------------------------------------------------------------------------------------


@dataclass
class RetrievalDataCollator:
    """LLM-Embedder's collator: ``query`` / ``key`` encodings with a ``key_mask`` for ragged groups.

    Items are LLM-Embedder rows (``query``; ``key`` = [positive, negatives...] already carrying their
    instructions; ``task``; optional ``teacher_scores``, ``key_index``, ``query_id``) or corpus rows
    (``content``), or :class:`Group` objects (converted: ``key`` = document texts, ``teacher_scores`` =
    scores; add instructions beforehand with :func:`densetune.data.prompts.apply_instruction`).

    Args:
        tokenizer: a Hugging Face tokenizer.
        query_max_length: query token limit.
        key_max_length: key (and corpus ``content``) token limit.
        inbatch_same_dataset: the DataLoader hands over one pre-built batch per step (from
            :class:`~densetune.data.compat.SameDatasetTrainDataset` with ``batch_size=1``): the single item is a
            list of rows or a dict of columns, and is unpacked. A list of lists is flattened in any mode.
        cross: give ``cross`` = (query, key) pair encodings [B*G, L] (truncated at
            ``query_max_length + key_max_length``) and ``batch_size`` instead of separate encodings.

    Returns:
        A dict with ``query`` (BatchEncoding [B, Lq]) and ``key`` (BatchEncoding [B*G, Lk], each group padded
        with ``""`` keys to the largest group G); ``key_mask`` [B, G] long (1 real key, 0 padding);
        ``teacher_scores`` [B, G] float (padded with 0, read with ``key_mask``) or None when no row has scores;
        ``key_index`` [B, G] long padded with -1; ``content`` encodings for corpus rows; ``task`` (one value;
        all rows of a batch must share it); other numeric fields as tensors, anything else as lists.

    Raises:
        ValueError: rows of different tasks in one batch, or teacher scores on some rows only.
    """

    tokenizer: PreTrainedTokenizerBase = None
    query_max_length: int = 256
    key_max_length: int = 256
    inbatch_same_dataset: bool = False
    cross: bool = False

    def __call__(self, batch_elem: Sequence[Any]) -> dict[str, Any]:
        rows = self._rows(batch_elem)
        if not rows:
            raise ValueError("cannot collate an empty batch")
        keys = list(rows[0])
        out: dict[str, Any] = {}
        queries: list[str] | None = None
        flat_keys: list[str] | None = None
        group = 0
        for k in keys:
            values = [r.get(k) for r in rows]
            if k == "query":
                queries = [str(v) for v in values]
                if not self.cross:
                    out[k] = self._encode(queries, self.query_max_length)
            elif k == "key":
                groups = [[v] if isinstance(v, str) else list(v) for v in values]
                group = max(len(g) for g in groups)
                out["key_mask"] = torch.tensor([[1] * len(g) + [0] * (group - len(g)) for g in groups])
                flat_keys = [str(x) for g in groups for x in g + [""] * (group - len(g))]
                if not self.cross:
                    out[k] = self._encode(flat_keys, self.key_max_length)
            elif k == "key_index":
                width = max(len(v) for v in values)
                out[k] = torch.tensor([list(v) + [-1] * (width - len(v)) for v in values], dtype=torch.long)
            elif k == "content":
                out[k] = self._encode([str(v) for v in values], self.key_max_length)
            elif k == "task":
                tasks = sorted({str(v) for v in values})
                if len(tasks) > 1:
                    raise ValueError(
                        f"all rows of a batch must come from one task, got {tasks}; batch them with "
                        "SameDatasetTrainDataset / SameTaskBatchSampler or collate tasks separately"
                    )
                out[k] = values[0]
            elif k == "teacher_scores":
                out[k] = self._scores(values)
            elif all(v is None for v in values):
                out[k] = None
            else:
                out[k] = _tensor_or_list(values)
        if self.cross:
            if queries is None or flat_keys is None:
                raise ValueError("cross=True needs rows with both 'query' and 'key'")
            repeated = [queries[i // group] for i in range(len(flat_keys))]
            out["cross"] = self.tokenizer(
                repeated,
                flat_keys,
                padding=True,
                truncation=True,
                max_length=self.query_max_length + self.key_max_length,
                return_tensors="pt",
            )
            out["batch_size"] = len(queries)
        return out

    def _rows(self, batch_elem: Sequence[Any]) -> list[dict[str, Any]]:
        items = list(batch_elem)
        if self.inbatch_same_dataset and len(items) == 1 and isinstance(items[0], Mapping):
            columns = items[0]
            if (
                columns
                and all(isinstance(v, list) for v in columns.values())
                and isinstance(columns.get("query", columns.get("content")), list)
            ):
                size = len(next(iter(columns.values())))
                return [{k: v[i] for k, v in columns.items()} for i in range(size)]
        if items and all(isinstance(x, (list, tuple)) for x in items):
            items = [row for part in items for row in part]
        return [_llm_embedder_row(x) for x in items]

    def _scores(self, values: list[Any]) -> torch.Tensor | None:
        present = [v is not None for v in values]
        if not any(present):
            return None
        if not all(present):
            raise ValueError(
                f"teacher_scores given for {sum(present)} of {len(values)} rows in this batch; give scores for "
                "every row of a task or for none"
            )
        width = max(len(v) for v in values)
        return torch.tensor([list(v) + [0.0] * (width - len(v)) for v in values], dtype=torch.float32)

    def _encode(self, texts: list[str], max_len: int) -> BatchEncoding:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")


def _llm_embedder_row(item: Any) -> dict[str, Any]:
    if isinstance(item, Group):
        return {
            "query": item.query,
            "key": [doc_text(d) for d in item.docs],
            "task": item.task,
            "teacher_scores": item.scores,
        }
    if isinstance(item, Mapping):
        return dict(item)
    raise ValueError(f"expected a dict or Group per batch item, got {type(item).__name__}")


def _tensor_or_list(values: list[Any]) -> Any:
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return torch.tensor(values)
    return values


# ---------------------------------------------------------------------------------------------------------
# FlagEmbedding BGE-EN-ICL
# ---------------------------------------------------------------------------------------------------------

# Types whose batches score each query against its own group only (the seed's "not in-batch" message): in a
# clustering or classification batch the other queries' passages are often texts of the query's own cluster
# or class, so as negatives they would be false.
NO_IN_BATCH_TYPES = ("symmetric_class", "symmetric_clustering")
SAME_EMBED_OUTPUTS = ("seed", "train")


@dataclass
class SameEmbedCollator:
    """BGE-EN-ICL's collator for LLM embedders: prompted queries with in-context examples, EOS, left padding.

    Every batch comes from one task (same-task batching). For each group:

    - with ``group_size_by_type``, the group is first cut to its type's size (positive and first negatives
      kept): one selector serves a mix of task types while each type trains with its own group size, as the
      seed's ``train_group_size`` / ``symmetric_train_group_size`` / ``max_class_neg`` and ``only_1neg``
      (2) do;
    - the query becomes ``[examples]<instruct>{prompt}\\n<query>{query}\\n<response>``
      (:func:`~densetune.data.prompts.build_icl_query`); when ``retrieval_use_examples`` (or for sts /
      clustering / class tasks) 0..``max_examples`` in-context examples are drawn from the *other* groups of
      the batch, each ``{prompted query}\\n<response>{positive}\\n\\n`` cut to ``example_query_max_len`` /
      ``example_passage_max_len`` tokens, within ``icl_budget`` tokens (None: whatever room the query leaves;
      the seed's fixed ``query_max_len - 512`` gave no examples at all for ``query_max_len <= 512``);
    - passages are raw for retrieval and class tasks and prompted like queries for sts / clustering
      (:func:`~densetune.data.prompts.format_passage`);
    - texts are tokenised with the tokenizer's special tokens, cut so an EOS fits, the EOS appended (when the
      tokenizer did not add one), then padded on ``padding_side`` (left: the last position is every row's
      last real token, what last-token pooling reads) to a multiple of ``pad_to_multiple_of``.

    The example draw is seeded from ``seed`` and the batch's queries, so the same batch always gets the same
    examples (any worker, any resumed run).

    Two outputs (``output``): ``"seed"`` returns the seed's dict, for code written against FlagEmbedding;
    ``"train"`` returns the bi-encoder batch ``densetune train`` feeds to ``BiEncoder.forward`` and
    :func:`densetune.losses.loss_inputs` (the recipe's ``data.collator`` sets ``output: train``).

    The seed's own input, one pre-tokenised ``(queries, passages, messages, scores)`` tuple per step (its
    ``SameDatasetTrainDataset``), is also accepted and only padded.

    In-context examples of clustering rows pair the query with the row's ``category`` label when it has one
    (as the seed does), else with its positive text.

    Differences from the seed, on purpose: texts are cut
    on token boundaries of the original string (the seed decoded token ids, re-spacing some texts); the
    tokenizer must hold the special tokens when ``use_special_tokens`` (the seed split them silently).

    Args:
        tokenizer: a decoder tokenizer; add :data:`~densetune.data.prompts.LLM_SPECIAL_TOKENS` first when
            ``use_special_tokens`` (and resize the model's embeddings): ``BiEncoder.from_pretrained(...,
            special_tokens=...)`` does both.
        model, max_length, label_pad_token_id: kept for the seed's signature (DataCollatorForSeq2Seq); unused.
        padding: ``True`` (longest) or ``"max_length"`` (pad to query_max_len / passage_max_len).
        pad_to_multiple_of: round padded lengths up to a multiple of this (8).
        return_tensors: ``"pt"``.
        query_max_len: query token limit, ICL examples, special tokens and EOS included.
        passage_max_len: passage token limit, special tokens and EOS included.
        sub_batch_size: > 0 returns lists of padded sub-batches of this many rows (the seed's option; seed
            output only: for training use ``train.grad_cache_chunk_size``).
        train_group_size: kept for the seed's signature; use ``group_size_by_type``.
        use_special_tokens: ``<instruct>``/``<query>``/``<response>`` tokens, else plain-text labels.
        retrieval_use_examples: in-context examples for retrieval tasks too (symmetric tasks always get them).
        max_examples: the most in-context examples per query (the count is drawn from 0..max_examples).
        example_query_max_len: token limit of an example's prompted query.
        example_passage_max_len: token limit of an example's passage.
        icl_budget: token limit of all examples of one query (None: the room the query leaves).
        append_eos: append the EOS token (last-token pooling reads it).
        padding_side: ``"left"`` (decoders, last-token pooling) or ``"right"``.
        seed: base seed of the example draw.
        output: ``"seed"`` or ``"train"`` (see Returns).
        group_size_by_type: documents per group for each Example type (:data:`~densetune.data.records.
            EXAMPLE_TYPES`), e.g. ``{"retrieval": 8, "symmetric_sts": 8, "symmetric_clustering": 8,
            "symmetric_class": 16, "only_1neg": 2}``. A cap: larger groups are cut to it, smaller ones (the
            selector's ``n_passages`` is the most any group has) stay as they are; types not listed keep the
            selector's size. None: no cutting.

    Returns:
        ``output="seed"``: ``{"query": BatchEncoding [B, Lq], "passage": BatchEncoding [B*n, Lp],
        "messages": list[str], "teacher_scores": list[float] | None}``: ``messages`` is ``["not in-batch"]``
        for symmetric class / clustering batches and ``["normal"] * (B*n)`` otherwise, as in the seed;
        ``teacher_scores`` are the groups' scores flattened (positive first per group) when every group has
        them.

        ``output="train"``: ``q_input_ids``, ``q_attention_mask`` [B, Lq]; ``d_input_ids``,
        ``d_attention_mask`` [B*n, Lp] (each query's documents contiguous, positive first); ``labels`` zeros
        [B]; ``passage_doc_ids`` [B*n] int64 when every document has an id; ``teacher_scores`` [B, n] float32
        when every group has scores; ``task`` (str) when the batch's groups share one; and
        ``in_batch_negatives: False`` for symmetric class / clustering batches (the seed's "not in-batch":
        the loss scores each query against its own group only). The key is absent otherwise, so the loss's
        own setting applies.

    Raises:
        ValueError: an unknown ``output`` / ``padding_side``, ``sub_batch_size`` with ``output="train"``, a bad
            ``group_size_by_type``, special tokens missing from the tokenizer; at call time, groups of
            different types or sizes in one batch.
    """

    tokenizer: PreTrainedTokenizerBase
    model: Any = None
    padding: bool | str = True
    max_length: int | None = None
    pad_to_multiple_of: int | None = 8
    label_pad_token_id: int = -100
    return_tensors: str = "pt"
    query_max_len: int = 32
    passage_max_len: int = 128
    sub_batch_size: int = 0
    train_group_size: int = 0
    use_special_tokens: bool = True
    retrieval_use_examples: bool = True
    max_examples: int = 5
    example_query_max_len: int = 64
    example_passage_max_len: int = 96
    icl_budget: int | None = None
    append_eos: bool = True
    padding_side: str = "left"
    seed: int = 42
    output: str = "seed"
    group_size_by_type: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if self.output not in SAME_EMBED_OUTPUTS:
            raise ValueError(
                f"output must be one of {', '.join(map(repr, SAME_EMBED_OUTPUTS))}, got {self.output!r} "
                "('train' for densetune train, 'seed' for the FlagEmbedding dict)"
            )
        if self.output == "train" and self.sub_batch_size and self.sub_batch_size > 0:
            raise ValueError(
                "sub_batch_size splits the seed's output only; with output='train' set sub_batch_size=0 and "
                "use train.grad_cache_chunk_size for constant memory"
            )
        if self.append_eos and self.tokenizer.eos_token_id is None:
            raise ValueError(
                "append_eos=True needs a tokenizer with an eos_token; set one or append_eos=False"
            )
        self.group_size_by_type = _check_group_sizes_by_type(self.group_size_by_type)
        if self.use_special_tokens:
            split = [
                t
                for t in LLM_SPECIAL_TOKENS
                if len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) != 1
            ]
            if split:
                raise ValueError(
                    f"use_special_tokens=True but the tokenizer splits {', '.join(split)} into several tokens: "
                    "add LLM_SPECIAL_TOKENS to it first (BiEncoder.from_pretrained(special_tokens=...); in a "
                    "recipe model.kwargs.special_tokens) or set use_special_tokens=False"
                )

    def __call__(self, features: Sequence[Any], return_tensors: str | None = None) -> dict[str, Any]:
        items = list(features)
        if not items:
            raise ValueError("cannot collate an empty batch")
        groups: list[Group] | None = None
        if len(items) == 1 and isinstance(items[0], tuple) and len(items[0]) == 4:
            queries, passages, messages, scores = items[0]
        else:
            if all(isinstance(x, list) for x in items):
                items = [g for part in items for g in part]
            groups = self.trim_groups([feature_to_group(x) for x in items])
            queries, passages, messages, scores = self.build(groups)
        if self.output == "train":
            return self._train_batch(queries, passages, messages, scores, groups)
        q = self._pad_all(queries, self.query_max_len)
        p = self._pad_all(passages, self.passage_max_len)
        return {"query": q, "passage": p, "messages": messages, "teacher_scores": scores or None}

    def trim_groups(self, groups: Sequence[Group]) -> list[Group]:
        """The groups cut to their type's ``group_size_by_type`` (positive and first negatives, scores alike)."""
        sizes = self.group_size_by_type or {}
        out = []
        for g in groups:
            size = sizes.get(g.type)
            if size is None or len(g.docs) <= size:
                out.append(g)
                continue
            scores = None if g.scores is None else g.scores[:size]
            out.append(dataclasses.replace(g, docs=g.docs[:size], scores=scores))
        return out

    def texts(self, groups: Sequence[Group]) -> tuple[list[str], list[str]]:
        """The query strings [B] (with in-context examples) and passage strings [B*n] the model will see."""
        groups = self.trim_groups(groups)
        types = sorted({g.type for g in groups})
        if len(types) > 1:
            raise ValueError(f"all groups of a batch must have one type (same-task batching), got {types}")
        _check_group_sizes([len(g.docs) for g in groups])
        kind = types[0]
        reserve = 1 if self.append_eos else 0
        use_examples = self.retrieval_use_examples or any(t in kind for t in ("clustering", "sts", "class"))
        # A clustering example answers with its row's category label when the data gives one (FlagEmbedding's
        # pairing), else with its positive text.
        clustering = "clustering" in kind
        pairs = (
            [(g.query, g.category if clustering and g.category else doc_text(g.docs[0])) for g in groups]
            if use_examples
            else []
        )
        rng = random.Random(derive_seed(self.seed, "icl", *[g.query_id or g.query for g in groups]))
        queries = []
        for i, g in enumerate(groups):
            examples = sample_icl_examples(pairs, i, rng, self.max_examples) if pairs else []
            queries.append(
                build_icl_query(
                    g.query,
                    g.prompt,
                    examples,
                    self.tokenizer,
                    use_special_tokens=self.use_special_tokens,
                    query_max_len=self.query_max_len,
                    example_query_max_len=self.example_query_max_len,
                    example_passage_max_len=self.example_passage_max_len,
                    icl_budget=self.icl_budget,
                    reserve_tokens=reserve,
                )
            )
        passages = [
            format_passage(
                doc_text(d),
                g.prompt,
                g.type,
                self.use_special_tokens,
                tokenizer=self.tokenizer,
                passage_max_len=self.passage_max_len,
                reserve_tokens=reserve,
            )
            for g in groups
            for d in g.docs
        ]
        return queries, passages

    def build(
        self, groups: Sequence[Group]
    ) -> tuple[dict[str, list], dict[str, list], list[str], list[float]]:
        """Tokenised (unpadded) queries and passages, messages and flattened teacher scores for one batch."""
        groups = self.trim_groups(groups)
        queries, passages = self.texts(groups)
        if groups[0].type in NO_IN_BATCH_TYPES:
            messages = ["not in-batch"]
        else:
            messages = ["normal"] * len(passages)
        scores: list[float] = []
        if all(g.scores is not None for g in groups):
            scores = [float(s) for g in groups for s in g.scores]  # type: ignore[union-attr]
        return (
            self._tokenize(queries, self.query_max_len),
            self._tokenize(passages, self.passage_max_len),
            messages,
            scores,
        )

    def _train_batch(
        self,
        queries: Mapping[str, list],
        passages: Mapping[str, list],
        messages: Sequence[str],
        scores: Sequence[float],
        groups: Sequence[Group] | None,
    ) -> dict[str, Any]:
        """The bi-encoder batch (see Returns); ``groups`` is None for the seed's pre-tokenised input."""
        q = self._pad(queries, self.query_max_len)
        d = self._pad(passages, self.passage_max_len)
        n_q, n_d = q["input_ids"].shape[0], d["input_ids"].shape[0]
        if n_q == 0 or n_d % n_q:
            raise ValueError(f"{n_d} passages for {n_q} queries: every query needs the same number")
        n = n_d // n_q
        out: dict[str, Any] = {
            "q_input_ids": q["input_ids"],
            "q_attention_mask": q["attention_mask"],
            "d_input_ids": d["input_ids"],
            "d_attention_mask": d["attention_mask"],
            "labels": torch.zeros(n_q, dtype=torch.long),
        }
        if scores:
            if len(scores) != n_d:
                raise ValueError(f"{len(scores)} teacher scores for {n_d} passages: give one per passage")
            out["teacher_scores"] = torch.tensor(list(scores), dtype=torch.float32).view(n_q, n)
        if list(messages) == ["not in-batch"]:
            out["in_batch_negatives"] = False
        if groups is not None:
            ids = [doc.id for g in groups for doc in g.docs]
            if all(ids):
                out["passage_doc_ids"] = torch.tensor([doc_id_to_int64(i) for i in ids], dtype=torch.long)
            tasks = {g.task for g in groups}
            if len(tasks) == 1 and groups[0].task:
                out["task"] = groups[0].task
        return out

    def _tokenize(self, texts: list[str], max_len: int) -> dict[str, list]:
        reserve = 1 if self.append_eos else 0
        enc = self.tokenizer(texts, max_length=max_len - reserve, truncation=True, add_special_tokens=True)
        ids = [list(x) for x in enc["input_ids"]]
        if self.append_eos:
            eos = self.tokenizer.eos_token_id
            ids = [x if x and x[-1] == eos else x + [eos] for x in ids]
        return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}

    def _pad_all(self, encoded: Mapping[str, list], max_len: int) -> Any:
        rows = len(encoded["input_ids"])
        if not self.sub_batch_size or self.sub_batch_size <= 0:
            return self._pad(encoded, max_len)
        return [
            self._pad({k: v[i : i + self.sub_batch_size] for k, v in encoded.items()}, max_len)
            for i in range(0, rows, self.sub_batch_size)
        ]

    def _pad(self, encoded: Mapping[str, list], max_len: int) -> dict[str, torch.Tensor]:
        seqs = encoded["input_ids"]
        longest = max(len(s) for s in seqs)
        length = max_len if self.padding == "max_length" else longest
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        input_ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            if not s:
                continue
            if self.padding_side == "left":
                input_ids[i, length - len(s) :] = torch.tensor(s)
                mask[i, length - len(s) :] = 1
            else:
                input_ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


def _check_group_sizes_by_type(sizes: Mapping[str, int] | None) -> dict[str, int] | None:
    """``group_size_by_type`` as a plain dict, or a ValueError naming the bad key and the valid ones."""
    if sizes is None:
        return None
    if not isinstance(sizes, Mapping):
        raise ValueError(f"group_size_by_type must map Example types to sizes, got {sizes!r}")
    for kind, size in sizes.items():
        if kind not in EXAMPLE_TYPES:
            raise ValueError(f"group_size_by_type: unknown type {kind!r}; valid: {', '.join(EXAMPLE_TYPES)}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(
                f"group_size_by_type[{kind!r}] must be an integer >= 1 (1 positive + size-1 negatives), "
                f"got {size!r}"
            )
    return dict(sizes)
