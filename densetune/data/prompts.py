"""Templates: turn a Group's raw texts into the strings a model sees (prefixes, instructions, ICL prompts).

:class:`Prompt` is the one template stage of a bi-encoder: training (dataset and collators), encoding, mining,
scoring and the saved model's sentence-transformers prompts all go through one object of it. It holds the
rules of two seed systems:

- NeMo Automodel: static prefixes joined with a space, or per-dataset instructions from corpus metadata.
- FlagEmbedding LLM-Embedder: task instructions prepended without a separator (:func:`apply_instruction`;
  the instructions themselves are :data:`densetune.data.tasks.TASK_CONFIG`).

The third family's functions are pure string functions too (a tokenizer is needed only where a token budget
is):

- FlagEmbedding BGE-EN-ICL: ``<instruct>``/``<query>``/``<response>`` query prompts
  (:func:`get_query_prompt`), in-context examples under a token budget (:func:`build_icl_query`,
  :func:`sample_icl_examples`) and prompted passages for symmetric tasks (:func:`format_passage`).

Layout of a BGE-EN-ICL query with two in-context examples (special tokens on)::

    <instruct>{prompt}\\n<query>{example 1 query}\\n<response>{example 1 passage}\\n\\n
    <instruct>{prompt}\\n<query>{example 2 query}\\n<response>{example 2 passage}\\n\\n
    <instruct>{prompt}\\n<query>{query}\\n<response>

(shown on three lines; it is one string). Without special tokens the seed's plain-text analogues are kept
exactly: ``Instruct: {prompt}\\nQuery: {query}``, examples joined by ``\\nResponse: `` (with a trailing space)
and the query ending in ``\\nResponse:`` (without one).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from densetune.data.tasks import TASK_CONFIG, task_instruction
from densetune.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from densetune.data.records import Group


# Added to the tokenizer (and the embedding matrix resized) when training BGE-EN-ICL style models.
LLM_SPECIAL_TOKENS = ["<instruct>", "<query>", "<response>"]

# What follows a BGE-EN-ICL query or symmetric passage: the model's embedding is read after it.
RESPONSE_SUFFIX = {True: "\n<response>", False: "\nResponse:"}
# What joins an in-context example's query to its passage (the seed's plain variant has a trailing space).
_EXAMPLE_JOIN = {True: "\n<response>", False: "\nResponse: "}
_EXAMPLE_END = "\n\n"


# ---------------------------------------------------------------------------------------------------------
# The template stage: prefixes (NeMo Automodel), dataset and task instructions (LLM-Embedder)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """The one template stage: how a query or passage, and a training Group, become the text a model reads.

    Training (the dataset and the collators), encoding, mining, scoring and the saved model all read one
    object of this class, so the text a model is trained on and the text it is used with cannot differ.
    Two layers, applied inner first:

    - the task layer (``instruction``, training data only, since inference has no task): each task's
      ``TASK_CONFIG[instruction]["instruction"][task]`` query / key instruction, prepended with no separator
      (LLM-Embedder; each instruction carries its own trailing space). :meth:`instruct` applies it to a Group
      once its document texts are resolved.
    - the model layer: ``query_prefix`` / ``passage_prefix`` joined to the text with ``separator`` when
      non-empty (NeMo Automodel's ``prefix + " " + text``; a prompt read from a sentence-transformers
      folder is prepended as is, ``separator=""``). With ``use_dataset_instruction`` a Group's own
      ``query_instruction`` / ``passage_instruction`` (corpus metadata) is joined the same way instead, texts
      stay raw when it is empty, and the static prefixes are ignored. :meth:`query` / :meth:`passage` apply
      it; :meth:`to_sentence_transformers` is what a saved model keeps of it.

    Args:
        query_prefix: e.g. ``"query:"``.
        passage_prefix: e.g. ``"passage:"``.
        separator: what joins a non-empty prefix to the text.
        use_dataset_instruction: the Groups' dataset instructions instead of the prefixes.
        instruction: a TASK_CONFIG name (``"llm-embedder"``, ``"bge"``, ``"e5"``, ``"instructor"``) whose
            per-task instructions :meth:`instruct` prepends; None adds none.

    Raises:
        ConfigError: ``instruction`` is not a TASK_CONFIG name.

    Example:
        >>> prompt = Prompt(query_prefix="query:", passage_prefix="passage:")
        >>> prompt.query("what is bm25")
        'query: what is bm25'
        >>> prompt.to_sentence_transformers()
        {'query': 'query: ', 'document': 'passage: '}
    """

    query_prefix: str = ""
    passage_prefix: str = ""
    separator: str = " "
    use_dataset_instruction: bool = False
    instruction: str | None = None

    def __post_init__(self) -> None:
        name = self.instruction
        if name is not None and (not isinstance(name, str) or "instruction" not in TASK_CONFIG.get(name, {})):
            raise ConfigError(
                "instruction",
                f"expected null or one of {', '.join(TASK_CONFIG)} (a TASK_CONFIG name), got {name!r}",
            )

    # -- the model layer -----------------------------------------------------------------------------------

    def query(self, text: str, *, instruction: str = "") -> str:
        """One query as the model reads it (``instruction``: its dataset instruction, when used)."""
        if self.use_dataset_instruction:
            return _join(instruction, " ", text)
        return _join(self.query_prefix, self.separator, text)

    def passage(self, text: str, *, instruction: str = "") -> str:
        """One passage as the model reads it (``instruction``: its dataset instruction, when used)."""
        if self.use_dataset_instruction:
            return _join(instruction, " ", text)
        return _join(self.passage_prefix, self.separator, text)

    def to_sentence_transformers(self) -> dict[str, str]:
        """The sentence-transformers prompts a saved model keeps (``query`` / ``document``), prepended
        verbatim: each static prefix with its separator, so ``prompt + text`` is :meth:`query` /
        :meth:`passage` of a text (dataset instructions belong to a corpus, not to the model)."""
        return {
            "query": _join(self.query_prefix, self.separator, ""),
            "document": _join(self.passage_prefix, self.separator, ""),
        }

    def check_agrees(self, other: Prompt) -> None:
        """Refuse ``other``'s settings where they would format a text differently from this prompt: a
        non-empty prefix of ``other`` must render as this one's, and ``other`` may use dataset instructions
        only if this one does (empty prefixes and False are "not set").

        Raises:
            ConfigError: naming the first setting that disagrees (``query_prefix``, ``passage_prefix`` or
                ``use_dataset_instruction``) and both values.
        """
        mine, theirs = self.to_sentence_transformers(), other.to_sentence_transformers()
        for key, name in (("query_prefix", "query"), ("passage_prefix", "document")):
            if getattr(other, key) and theirs[name] != mine[name]:
                raise ConfigError(
                    key,
                    f"{getattr(other, key)!r} formats texts as {theirs[name]!r} + text but the model's prompt is "
                    f"{mine[name]!r} + text; set it to the model's prefix or leave it empty to use the model's",
                )
        if other.use_dataset_instruction and not self.use_dataset_instruction:
            raise ConfigError(
                "use_dataset_instruction",
                "true here but false in the model's prompt; build the prompt with use_dataset_instruction=True",
            )

    # -- the task layer ------------------------------------------------------------------------------------

    def check_tasks(self, tasks: Iterable[str]) -> None:
        """Fail before training when a task has no instruction in the ``instruction`` set.

        Raises:
            ConfigError: naming the task and the known ones.
        """
        for task in sorted(set(tasks)):
            self._instructions_for(task)

    def _instructions_for(self, task: str) -> dict[str, str] | None:
        if self.instruction is None:
            return None
        try:
            return task_instruction(task, self.instruction)
        except ConfigError as err:  # the setting to change is the prompt's instruction set
            raise ConfigError("instruction", err.message) from None

    def instruct(self, group: Group) -> Group:
        """``group`` with its task's instructions prepended (``instruction``); the group itself without one.

        LLM-Embedder joining: ``instruction["query"] + query`` and ``instruction["key"] + document`` for every
        document, no separator. A document is rendered with :func:`~densetune.data.corpus.doc_text` first
        (title included), so call it once document texts are resolved.
        """
        instructions = self._instructions_for(group.task)
        if instructions is None:
            return group
        from densetune.data.corpus import doc_text  # corpus loads pyarrow: only training data needs it

        key = instructions["key"]
        docs = [
            dataclasses.replace(d, text=apply_instruction(doc_text(d), key), title="") for d in group.docs
        ]
        return dataclasses.replace(
            group, query=apply_instruction(group.query, instructions["query"]), docs=docs
        )


def _join(prefix: str, separator: str, text: str) -> str:
    """``prefix + separator + text`` when ``prefix`` is non-empty, else ``text`` (NeMo Automodel's rule)."""
    return f"{prefix}{separator}{text}" if prefix else text


def apply_instruction(text: str, instruction: str | None) -> str:
    """LLM-Embedder joining: ``instruction + text`` (the instruction carries its own trailing space).

    Example:
        >>> from densetune.data.tasks import TASK_CONFIG, task_instruction
        >>> apply_instruction("who wrote hamlet", TASK_CONFIG["llm-embedder"]["instruction"]["qa"]["query"])
        'Represent this query for retrieving relevant documents: who wrote hamlet'
    """
    return f"{instruction}{text}" if instruction else text


# ---------------------------------------------------------------------------------------------------------
# FlagEmbedding BGE-EN-ICL: query prompts, in-context examples, symmetric passages
# ---------------------------------------------------------------------------------------------------------


def get_query_prompt(query: str, prompt: str, use_special_tokens: bool) -> str:
    """BGE-EN-ICL query prompt (the seed's name and signature).

    Returns:
        ``<instruct>{prompt}\\n<query>{query}`` with special tokens, else
        ``Instruct: {prompt}\\nQuery: {query}``.
    """
    if use_special_tokens:
        return f"<instruct>{prompt}\n<query>{query}"
    return f"Instruct: {prompt}\nQuery: {query}"


def count_tokens(text: str, tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens of ``text`` without the tokenizer's own special tokens (BOS/CLS, EOS/SEP)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def truncate_text(text: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> str:
    """``text`` cut to at most ``max_tokens`` tokens (no special tokens counted), cut on a token boundary.

    Fast tokenizers cut the original string at the last kept token's character offset, so the kept text is
    exactly the original (the seed decoded the token ids instead, which lower-cases and re-spaces text for
    some tokenizers). Slow tokenizers fall back to decoding.

    Args:
        text: the text to cut.
        tokenizer: a Hugging Face tokenizer.
        max_tokens: the limit; ``<= 0`` gives ``""``.

    Returns:
        ``text`` itself when it fits, else its longest prefix that fits.
    """
    if max_tokens <= 0:
        return ""
    fast = bool(getattr(tokenizer, "is_fast", False))
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast)
    ids = encoding["input_ids"]
    if len(ids) <= max_tokens:
        return text
    if not fast:
        return tokenizer.decode(ids[:max_tokens])
    offsets = encoding["offset_mapping"]
    keep = max_tokens
    # Re-tokenising a cut string can, rarely, give one more piece than before (a word split differently);
    # cut one token earlier until it fits so the limit always holds.
    while keep > 0:
        cut = text[: offsets[keep - 1][1]]
        if count_tokens(cut, tokenizer) <= max_tokens:
            return cut
        keep -= 1
    return ""


def _room(tokenizer: PreTrainedTokenizerBase, max_len: int, suffix: str, reserve_tokens: int) -> int:
    """Tokens left for text after the tokenizer's special tokens, the suffix and ``reserve_tokens``."""
    return (
        max_len
        - tokenizer.num_special_tokens_to_add(pair=False)
        - count_tokens(suffix, tokenizer)
        - reserve_tokens
    )


def _render_icl_example(
    query: str,
    passage: str,
    prompt: str,
    tokenizer: PreTrainedTokenizerBase,
    use_special_tokens: bool,
    example_query_max_len: int,
    example_passage_max_len: int,
) -> str:
    # The query limit applies to the whole prompted query (instruction included), as in the seed.
    query_part = truncate_text(
        get_query_prompt(query, prompt, use_special_tokens), tokenizer, example_query_max_len
    )
    passage_part = truncate_text(passage, tokenizer, example_passage_max_len)
    return query_part + _EXAMPLE_JOIN[use_special_tokens] + passage_part + _EXAMPLE_END


def build_icl_query(
    query: str,
    prompt: str,
    examples: Sequence[tuple[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    use_special_tokens: bool = True,
    query_max_len: int = 512,
    example_query_max_len: int = 64,
    example_passage_max_len: int = 96,
    icl_budget: int | None = None,
    reserve_tokens: int = 0,
) -> str:
    """A BGE-EN-ICL query: in-context examples, then the prompted query, ending in ``\\n<response>``.

    Each example ``(example query, example passage)`` is rendered as
    ``{get_query_prompt(example query, prompt)}\\n<response>{example passage}\\n\\n`` (plain variant:
    ``\\nResponse: ``), its prompted query cut to ``example_query_max_len`` tokens and its passage to
    ``example_passage_max_len``. Examples are added in order while their total fits the budget; the first that
    does not fit stops the list (the seed's rule). With no examples this is the plain training query.

    The budget: the query may use ``query_max_len`` tokens minus the tokenizer's special tokens, the suffix
    and ``reserve_tokens``; the prompted query is cut to that first, and examples get what it leaves, capped
    at ``icl_budget`` when given. Examples therefore never push the query itself out. (The seed allowed
    examples ``query_max_len - 512`` tokens, a fixed budget that admits no example at all when
    ``query_max_len <= 512``, then cut the joined text from the right, which could cut the query; pass
    ``icl_budget=query_max_len - 512`` to reproduce its budget.)

    Args:
        query: the raw query.
        prompt: the task instruction (``Group.prompt``); also used for the examples, which come from the same
            task's batch.
        examples: ``(query, passage)`` pairs, raw, in the order to try them (see :func:`sample_icl_examples`).
        tokenizer: the model's tokenizer (with :data:`LLM_SPECIAL_TOKENS` added when ``use_special_tokens``).
        use_special_tokens: ``<instruct>``/``<query>``/``<response>`` tokens, else plain-text labels.
        query_max_len: the query's token limit, special tokens included (the seed's default is 32).
        example_query_max_len: token limit of each example's prompted query.
        example_passage_max_len: token limit of each example's passage.
        icl_budget: at most this many tokens of examples (None: all the room the query leaves).
        reserve_tokens: tokens the collator adds beyond the tokenizer's own special tokens (e.g. 1 for an EOS
            appended for last-token pooling).

    Returns:
        The query string; tokenised with the tokenizer's special tokens it fits ``query_max_len``.

    Raises:
        ConfigError: ``query_max_len`` leaves no room for any query text.
    """
    suffix = RESPONSE_SUFFIX[use_special_tokens]
    room = _room(tokenizer, query_max_len, suffix, reserve_tokens)
    if room <= 0:
        raise ConfigError(
            "query_max_len",
            f"{query_max_len} tokens leave no room for the query after special tokens and {suffix!r}; "
            "raise it",
        )
    query_text = truncate_text(get_query_prompt(query, prompt, use_special_tokens), tokenizer, room)
    left = room - count_tokens(query_text, tokenizer)
    budget = left if icl_budget is None else min(icl_budget, left)

    pieces: list[str] = []
    used = ""
    for example_query, example_passage in examples:
        rendered = _render_icl_example(
            example_query,
            example_passage,
            prompt,
            tokenizer,
            use_special_tokens,
            example_query_max_len,
            example_passage_max_len,
        )
        if count_tokens(used + rendered, tokenizer) > budget:
            break
        pieces.append(rendered)
        used += rendered
    # Tokens can merge across the join with the query for some tokenizers; drop examples until it fits.
    while pieces and count_tokens("".join(pieces) + query_text, tokenizer) > room:
        pieces.pop()
    return "".join(pieces) + query_text + suffix


def sample_icl_examples(
    batch_pairs: Sequence[tuple[str, str]],
    own_index: int,
    rng: random.Random,
    max_examples: int = 5,
) -> list[tuple[str, str]]:
    """In-context examples for query ``own_index``: 0..``max_examples`` other pairs of the same batch.

    The count is drawn uniformly from ``0..max_examples`` (the seed: 0..5), then that many distinct pairs
    other than the query's own, in random order; fewer when the batch has fewer other pairs. (The seed sampled
    ``count + 1`` pairs before removing its own, which raises when the batch is smaller than that.)

    Args:
        batch_pairs: ``(query, positive passage)`` of every query in the batch (for clustering, the category).
        own_index: the position of this query's own pair, never returned.
        rng: the caller's seeded generator (e.g. ``random.Random(derive_seed(seed, epoch, step))``).
        max_examples: the most examples to draw.

    Returns:
        The chosen pairs.
    """
    count = rng.randint(0, max_examples)
    others = [i for i in range(len(batch_pairs)) if i != own_index]
    count = min(count, len(others))
    return [batch_pairs[i] for i in rng.sample(others, count)]


def is_symmetric_prompted(type: str) -> bool:
    """Whether passages of this Example type get the prompt too (BGE-EN-ICL: sts and clustering tasks)."""
    return "sts" in type or "clustering" in type


def format_passage(
    passage: str,
    prompt: str,
    type: str,
    use_special_tokens: bool,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    passage_max_len: int | None = None,
    reserve_tokens: int = 0,
) -> str:
    """A passage as BGE-EN-ICL feeds it: raw for retrieval, prompted like a query for sts/clustering.

    For ``symmetric_sts`` and ``symmetric_clustering`` the passage becomes
    ``get_query_prompt(passage, prompt) + "\\n<response>"`` (plain: ``"\\nResponse:"``); with a tokenizer and
    ``passage_max_len`` the prompted text is cut first so the suffix always survives truncation (the seed's
    order). Other types (retrieval, symmetric_class, only_1neg) return ``passage`` unchanged.

    Args:
        passage: the passage text.
        prompt: the task instruction.
        type: the Example type.
        use_special_tokens: special-token or plain-text labels.
        tokenizer: optional, to cut the prompted passage to ``passage_max_len``.
        passage_max_len: token limit, special tokens included (needs ``tokenizer``).
        reserve_tokens: tokens the collator adds beyond the tokenizer's own special tokens.
    """
    if not is_symmetric_prompted(type):
        return passage
    suffix = RESPONSE_SUFFIX[use_special_tokens]
    text = get_query_prompt(passage, prompt, use_special_tokens)
    if tokenizer is not None and passage_max_len is not None:
        text = truncate_text(text, tokenizer, _room(tokenizer, passage_max_len, suffix, reserve_tokens))
    return text + suffix
