"""Collate for FlagEmbedding's LLM embedders, with the seeds' names, signatures and output keys.

- :class:`RetrievalDataCollator` (LLM-Embedder): ``query`` / ``key`` encodings, ``key_mask`` for groups of
  different sizes, ``teacher_scores``; ``cross=True`` gives (query, key) pair encodings.
- :class:`SameEmbedCollator` (BGE-EN-ICL): prompted queries with in-context examples drawn from the batch,
  EOS appended and left padding for last-token pooling on decoder models; the seed's ``query`` /
  ``passage`` / ``messages`` dict, or (``output="train"``) the bi-encoder layout of
  :mod:`densetune.data.collators`, whose input handling (Groups or NeMo-style dicts) these share.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from densetune.data.batch import Batch
from densetune.data.collators import as_groups, check_group_sizes, passage_doc_ids, shared_task
from densetune.data.corpus import doc_text
from densetune.data.prompts import (
    LLM_SPECIAL_TOKENS,
    build_icl_query,
    format_passage,
    sample_icl_examples,
)
from densetune.data.records import EXAMPLE_TYPES, Group
from densetune.data.seeds import derive_seed

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerBase

__all__ = ["NO_IN_BATCH_TYPES", "RetrievalDataCollator", "SameEmbedCollator"]


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
            :class:`~densetune.compat.llm_embedder.SameDatasetTrainDataset` with ``batch_size=1``): the single item is a
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
    ``"train"`` returns the bi-encoder batch ``BiEncoder.forward`` and :func:`densetune.losses.loss_inputs`
    read, as a dict (the recipe's ``data.collator`` sets ``output: train``); :meth:`collate_groups` gives it as
    the typed :class:`~densetune.data.batch.Batch` ``densetune train`` uses.

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
        if self.output == "train":
            return self.collate_groups(features).to_dict()
        queries, passages, messages, scores, _ = self._built(features)
        q = self._pad_all(queries, self.query_max_len)
        p = self._pad_all(passages, self.passage_max_len)
        return {"query": q, "passage": p, "messages": messages, "teacher_scores": scores or None}

    def collate_groups(self, features: Sequence[Any]) -> Batch:
        """The typed bi-encoder :class:`~densetune.data.batch.Batch` (what ``output="train"`` returns as a
        dict), whatever ``output`` is."""
        return self._train_batch(*self._built(features))

    def _built(
        self, features: Sequence[Any]
    ) -> tuple[Mapping[str, list], Mapping[str, list], list[str], list[float], list[Group] | None]:
        """Tokenised queries and passages, messages, flattened scores and the (trimmed) groups, or None for
        the seed's pre-tokenised tuple."""
        items = list(features)
        if not items:
            raise ValueError("cannot collate an empty batch")
        if len(items) == 1 and isinstance(items[0], tuple) and len(items[0]) == 4:
            queries, passages, messages, scores = items[0]
            return queries, passages, messages, scores, None
        if all(isinstance(x, list) for x in items):
            items = [g for part in items for g in part]
        groups = self.trim_groups(as_groups(items))
        return (*self.build(groups), groups)

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
        check_group_sizes([len(g.docs) for g in groups])
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
    ) -> Batch:
        """The bi-encoder batch (see Returns); ``groups`` is None for the seed's pre-tokenised input."""
        q = self._pad(queries, self.query_max_len)
        d = self._pad(passages, self.passage_max_len)
        n_q, n_d = q["input_ids"].shape[0], d["input_ids"].shape[0]
        if n_q == 0 or n_d % n_q:
            raise ValueError(f"{n_d} passages for {n_q} queries: every query needs the same number")
        n = n_d // n_q
        if scores and len(scores) != n_d:
            raise ValueError(f"{len(scores)} teacher scores for {n_d} passages: give one per passage")
        return Batch(
            q_input_ids=q["input_ids"],
            q_attention_mask=q["attention_mask"],
            d_input_ids=d["input_ids"],
            d_attention_mask=d["attention_mask"],
            labels=torch.zeros(n_q, dtype=torch.long),
            passage_doc_ids=passage_doc_ids(groups) if groups is not None else None,
            teacher_scores=torch.tensor(list(scores), dtype=torch.float32).view(n_q, n) if scores else None,
            task=shared_task(groups) if groups is not None else None,
            in_batch_negatives=False if list(messages) == ["not in-batch"] else None,
            query_ids=[g.query_id for g in groups] if groups is not None else [],
        )

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
