"""Collate: turn a batch of :class:`~densetune.data.records.Group` objects (or NeMo-style dicts) into tensors.

One collator per seed system, each with that seed's name, signature and output keys, so a user of the seed
switches by changing an import:

- :class:`BiEncoderCollator` (alias :data:`RetrievalBiencoderCollator`), NeMo Automodel: queries and
  documents tokenised separately, ``q_*`` / ``d_*`` tensors, ``labels``, ``passage_doc_ids``. The default
  collator of ``densetune train``.
- :class:`CrossEncoderCollator`, NeMo Automodel: one ``question:{query} \\n \\n passage:{passage}`` row per
  (query, document) pair.
- FlagEmbedding's ``RetrievalDataCollator`` (LLM-Embedder) and ``SameEmbedCollator`` (BGE-EN-ICL) are in
  :mod:`densetune.data.flag_collators`; they share this module's input handling, and ``SameEmbedCollator``
  (``output="train"``) gives the bi-encoder layout below.

Training calls ``collate_groups(groups)``, which builds the typed :class:`~densetune.data.batch.Batch` straight
from the Groups; the seed's ``__call__`` returns that batch as the seed's dict (:meth:`Batch.to_dict`), whose
layout for the bi-encoders (B queries, n documents per query, positive first) is::

    q_input_ids, q_attention_mask   [B, Lq]
    d_input_ids, d_attention_mask   [B*n, Lp]   rows i*n .. i*n+n-1 are query i's documents
    labels                          [B]         zeros: the positive is column 0 of each group
    passage_doc_ids                 [B*n] int64 only when every document has a non-empty id
    teacher_scores                  [B, n]      only when every group has teacher scores
    task                            str         only when every group has the same non-empty task
    in_batch_negatives              False       SameEmbedCollator, symmetric class / clustering batches only:
                                                score each query against its own group
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding

from densetune.data.batch import Batch
from densetune.data.corpus import doc_text
from densetune.data.prompts import Prompt
from densetune.data.records import Doc, Group, doc_id_to_int64

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerBase

__all__ = [
    "BiEncoderCollator",
    "CrossEncoderCollator",
    "RetrievalBiencoderCollator",
    "feature_to_group",
]

DEFAULT_RERANK_TEMPLATE = "question:{query} \n \n passage:{passage}"


# ---------------------------------------------------------------------------------------------------------
# Inputs: Groups and NeMo-style dicts are one thing to the collators
# ---------------------------------------------------------------------------------------------------------


def feature_to_group(feature: Group | Mapping[str, Any]) -> Group:
    """A NeMo Automodel dataset item (``question`` / ``doc_text`` ...) as a :class:`Group`; also reads
    LLM-Embedder (``query``/``key``) dicts.

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


def as_groups(items: Sequence[Group | Mapping[str, Any]]) -> list[Group]:
    """The batch items as Groups (NeMo-style or LLM-Embedder dicts read by :func:`feature_to_group`)."""
    return [feature_to_group(x) for x in items]


def check_group_sizes(sizes: Sequence[int], what: str = "documents") -> int:
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


def teacher_scores(groups: Sequence[Group], n: int) -> torch.Tensor | None:
    """[B, n] float32 when every group has n scores, else None."""
    rows = [g.scores for g in groups]
    if any(r is None for r in rows):
        return None
    if any(len(r) != n for r in rows):  # type: ignore[arg-type]
        sizes = sorted({len(r) for r in rows})  # type: ignore[arg-type]
        raise ValueError(f"teacher_scores must have one score per document ({n}); got lengths {sizes}")
    return torch.tensor(rows, dtype=torch.float32)


def passage_doc_ids(groups: Sequence[Group]) -> torch.Tensor | None:
    """[B*n] int64 hashes of the document ids, or None when any document has no id."""
    flat = [d.id for g in groups for d in g.docs]
    if not flat or not all(flat):
        return None
    return torch.tensor([doc_id_to_int64(s) for s in flat], dtype=torch.long)


def shared_task(groups: Sequence[Group]) -> str | None:
    """The batch's task when every group has the same non-empty one (per-task loss settings read it)."""
    tasks = {g.task for g in groups}
    return tasks.pop() if len(tasks) == 1 and "" not in tasks else None


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


def _merge_batch_dict(
    query_batch_dict: Mapping[str, Sequence[Any]],
    doc_batch_dict: Mapping[str, Sequence[Any]],
    train_n_passages: int,
) -> dict[str, list[Any]]:
    """Query and document encodings as one dict (NeMo Automodel's helper, for code that calls it).

    Query keys get a ``q_`` prefix and keep their values; document keys get ``d_`` and their flat
    ``[B * train_n_passages]`` values are regrouped per query: ``[B][train_n_passages]``. B is the number of
    query ``input_ids``; documents beyond ``B * train_n_passages`` are left out, as upstream.
    """
    batch_size = len(query_batch_dict["input_ids"])
    merged: dict[str, list[Any]] = {"q_" + k: v for k, v in query_batch_dict.items()}
    for key, values in doc_batch_dict.items():
        merged["d_" + key] = [
            list(values[i * train_n_passages : (i + 1) * train_n_passages]) for i in range(batch_size)
        ]
    return merged


def _convert_dict_to_list(input_dict: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """A dict of equal-length lists as a list of dicts: ``{"a": [1, 2], "b": [3, 4]}`` -> ``[{"a": 1, "b": 3},
    {"a": 2, "b": 4}]`` (NeMo Automodel's helper; the first key's length counts)."""
    keys = list(input_dict)
    return [{k: input_dict[k][i] for k in keys} for i in range(len(input_dict[keys[0]]))]


# ---------------------------------------------------------------------------------------------------------
# NeMo Automodel: bi-encoder and cross-encoder
# ---------------------------------------------------------------------------------------------------------


class BiEncoderCollator:
    """Tokenise a batch of groups for bi-encoder training (NeMo Automodel's ``BiEncoderCollator``).

    Queries get ``query_prefix`` and documents ``passage_prefix``, joined with a space when non-empty
    (``"query:"`` + ``"what is bm25"`` -> ``"query: what is bm25"``). With ``use_dataset_instruction`` each
    item's ``query_instruction`` / ``passage_instruction`` (corpus metadata) is joined the same way when
    non-empty and the static prefixes are ignored. Those rules are a :class:`~densetune.data.prompts.Prompt`;
    pass the model's (``prompt=model.prompt``, what ``densetune train`` does) and the collator formats texts
    exactly as the model does at encoding and after export. Queries and documents are tokenised in one call each,
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
        prompt: the :class:`~densetune.data.prompts.Prompt` to format texts with (densetune addition), e.g. the
            model's ``model.prompt``; None builds one from the three arguments above. With a prompt, a
            non-empty prefix or ``use_dataset_instruction`` that would format a text differently from it is
            an error: one prompt for training and inference, never two that disagree.
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
        same non-empty task (same-task batches: per-task loss settings read it). :meth:`collate_groups` gives
        the same as a typed :class:`~densetune.data.batch.Batch`.

    Raises:
        ValueError: an empty batch, or items with different numbers of documents (naming the sizes).
        ConfigError: ``prompt`` with a prefix or ``use_dataset_instruction`` that disagrees with it, naming
            the argument.

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
        prompt: Prompt | None = None,
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
        own = Prompt(
            query_prefix or "", passage_prefix or "", use_dataset_instruction=use_dataset_instruction
        )
        if prompt is None:
            prompt = own
        else:
            prompt.check_agrees(own)
        self.prompt = prompt
        self.query_prefix = prompt.query_prefix
        self.passage_prefix = prompt.passage_prefix
        self.use_dataset_instruction = prompt.use_dataset_instruction
        self.padding = padding
        self.pad_to_multiple_of = pad_to_multiple_of
        if isinstance(cache_tokens, bool) or not isinstance(cache_tokens, int) or cache_tokens < 0:
            raise ValueError(f"cache_tokens must be an integer >= 0, got {cache_tokens!r}")
        self.cache_tokens = cache_tokens
        # A cache per truncation length: a text is cut at q_max_len as a query, at p_max_len as a passage.
        self._caches = {n: _TokenCache(cache_tokens) for n in {q_max_len, p_max_len}}

    # NeMo Automodel's helper methods, for code that calls them on the collator.
    _merge_batch_dict = staticmethod(_merge_batch_dict)
    _convert_dict_to_list = staticmethod(_convert_dict_to_list)

    def texts(self, batch: Sequence[Group | Mapping[str, Any]]) -> tuple[list[str], list[str], int]:
        """The query strings [B], document strings [B*n] and n, as the model will see them (prefixes applied)."""
        groups = as_groups(batch)
        n = check_group_sizes([len(g.docs) for g in groups])
        prompt = self.prompt
        queries = [prompt.query(g.query, instruction=g.query_instruction) for g in groups]
        docs = [
            prompt.passage(doc_text(d), instruction=g.passage_instruction) for g in groups for d in g.docs
        ]
        return queries, docs, n

    def __call__(self, batch: Sequence[Group | Mapping[str, Any]]) -> dict[str, Any]:
        return self.collate_groups(batch).to_dict()

    def collate_groups(self, batch: Sequence[Group | Mapping[str, Any]]) -> Batch:
        """The typed :class:`~densetune.data.batch.Batch` of the groups (what ``__call__`` returns as a dict)."""
        groups = as_groups(batch)
        queries, docs, n = self.texts(groups)
        q = self._encode(queries, self.q_max_len)
        d = self._encode(docs, self.p_max_len)
        return Batch(
            q_input_ids=q["input_ids"],
            q_attention_mask=q["attention_mask"],
            d_input_ids=d["input_ids"],
            d_attention_mask=d["attention_mask"],
            labels=torch.zeros(len(groups), dtype=torch.long),
            passage_doc_ids=passage_doc_ids(groups),
            teacher_scores=teacher_scores(groups, n),
            task=shared_task(groups),
            query_ids=[g.query_id for g in groups],
        )

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
        items = list(features)
        if not items:
            raise ValueError("cannot collate an empty batch")
        # Rows the seed's cross-encoder dataset already flattened carry one document text each.
        grouped = not (isinstance(items[0], Mapping) and isinstance(items[0].get("doc_text"), str))
        groups: list[Group] = []
        if grouped:
            groups = as_groups(items)
            n = check_group_sizes([len(g.docs) for g in groups])
            pairs = [(g.query, doc_text(d)) for g in groups for d in g.docs]
            num_labels: int | None = len(groups)
        else:
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
            scores = teacher_scores(groups, n)
            if scores is not None:
                batch["teacher_scores"] = scores
        return batch
