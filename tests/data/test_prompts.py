"""Templates: NeMo prefixes and instructions, LLM-Embedder TASK_CONFIG, BGE-EN-ICL prompts and ICL budgets."""

from __future__ import annotations

import random

import pytest

from densetune.data.prompts import (
    LLM_SPECIAL_TOKENS,
    Prompt,
    apply_instruction,
    build_icl_query,
    count_tokens,
    format_passage,
    get_query_prompt,
    sample_icl_examples,
    truncate_text,
)
from densetune.data.tasks import TASK_CONFIG, task_instruction
from densetune.errors import ConfigError

PROMPT = "Given a question, retrieve passages that answer it"


def n_tokens(tokenizer, text: str) -> int:
    """Tokens as the collator will count them: with the tokenizer's own special tokens."""
    return len(tokenizer(text)["input_ids"])


# -- NeMo Automodel ---------------------------------------------------------------------------------------


def test_prompt_joins_prefixes_with_a_space():
    prompt = Prompt(query_prefix="query:")
    assert prompt.query("what is bm25") == "query: what is bm25"
    assert prompt.passage("what is bm25") == "what is bm25"


def test_prompt_prefixes_and_dataset_instructions():
    static = Prompt(query_prefix="query:", passage_prefix="passage:")
    assert static.query("q", instruction="Instruct: find\nQuery:") == "query: q"
    assert static.passage("pos") == "passage: pos"
    # With dataset instructions the static prefixes are ignored, and an empty instruction leaves text raw.
    dataset = Prompt(query_prefix="query:", passage_prefix="passage:", use_dataset_instruction=True)
    assert dataset.query("q", instruction="Instruct: find\nQuery:") == "Instruct: find\nQuery: q"
    assert dataset.passage("pos", instruction="") == "pos"
    assert dataset.passage("text", instruction="Represent:") == "Represent: text"
    assert Prompt().query("q") == "q"


def test_prompt_saved_form_is_what_it_prepends():
    """A sentence-transformers prompt is prepended verbatim: prompt + text must be the training text."""
    nemo = Prompt("query:", "passage:")
    assert nemo.to_sentence_transformers() == {"query": "query: ", "document": "passage: "}
    # A folder's prompt ending in a newline is kept as is (no separator added, none stripped).
    folder = Prompt("Instruct: find\nQuery:\n", "", separator="")
    saved = folder.to_sentence_transformers()
    assert saved == {"query": "Instruct: find\nQuery:\n", "document": ""}
    assert folder.query("q") == saved["query"] + "q" and folder.passage("p") == saved["document"] + "p"


def test_prompt_refuses_settings_that_would_format_texts_differently():
    model = Prompt("query: ", "passage: ", separator="")
    model.check_agrees(Prompt("query:", "passage:"))  # renders the same: "query: " + text
    model.check_agrees(Prompt())  # empty means "use the model's"
    with pytest.raises(ConfigError) as err:
        model.check_agrees(Prompt("query:", "doc:"))
    assert err.value.key == "passage_prefix" and "'doc: '" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        Prompt().check_agrees(Prompt(use_dataset_instruction=True))
    assert err.value.key == "use_dataset_instruction"
    with pytest.raises(ConfigError) as err:
        Prompt(instruction="llm")
    assert err.value.key == "instruction" and "llm-embedder, bge, e5, instructor" in str(err.value)


# -- LLM-Embedder ----------------------------------------------------------------------------------------


def test_task_config_instructions_are_the_seeds_strings():
    instructions = TASK_CONFIG["llm-embedder"]["instruction"]
    assert instructions == {
        "qa": {
            "query": "Represent this query for retrieving relevant documents: ",
            "key": "Represent this document for retrieval: ",
        },
        "convsearch": {
            "query": "Encode this query and context for searching relevant passages: ",
            "key": "Encode this passage for retrieval: ",
        },
        "chat": {
            "query": "Embed this dialogue to find useful historical dialogues: ",
            "key": "Embed this historical dialogue for retrieval: ",
        },
        "lrlm": {
            "query": "Embed this text chunk for finding useful historical chunks: ",
            "key": "Embed this historical text chunk for retrieval: ",
        },
        "icl": {
            "query": "Convert this example into vector to look for useful examples: ",
            "key": "Convert this example into vector for retrieval: ",
        },
        "tool": {
            "query": "Transform this user request for fetching helpful tool descriptions: ",
            "key": "Transform this tool description for retrieval: ",
        },
    }


def test_task_config_training_settings():
    training = TASK_CONFIG["llm-embedder"]["training"]
    selection = {
        task: (
            cfg["select_positive"],
            cfg["select_negative"],
            cfg["stable_distill"],
            cfg["max_sample_num"],
            cfg["teacher_scores_margin"],
            cfg["teacher_scores_min"],
        )
        for task, cfg in training.items()
    }
    assert selection == {
        "qa": ("first", "random", True, None, None, None),
        "convsearch": ("first", "random", False, None, None, None),
        "chat": ("teacher", "random", False, None, None, None),
        "lrlm": ("teacher", "random", False, 10000, 0.1, None),
        "icl": ("random", "random", True, None, None, None),
        "tool": ("first", "random", False, None, None, None),
    }
    assert training["lrlm"]["teacher_temperature"] == 0.1 and training["chat"]["distill_weight"] == 1.0


def test_apply_instruction_and_task_lookup():
    qa = task_instruction("qa")
    assert apply_instruction("who wrote hamlet", qa["query"]) == (
        "Represent this query for retrieving relevant documents: who wrote hamlet"
    )
    assert apply_instruction("text", None) == "text" and apply_instruction("text", "") == "text"
    assert task_instruction("anything", "e5") == {"query": "query: ", "key": "passage: "}
    with pytest.raises(ConfigError, match="valid: qa, convsearch, chat, lrlm, icl, tool"):
        task_instruction("qna")
    with pytest.raises(ConfigError, match="valid: llm-embedder, bge, e5, instructor"):
        task_instruction("qa", "bge-m3")


# -- BGE-EN-ICL prompts ----------------------------------------------------------------------------------


def test_query_prompt_strings_and_special_tokens():
    assert get_query_prompt("what is bm25", "Retrieve", True) == "<instruct>Retrieve\n<query>what is bm25"
    assert get_query_prompt("what is bm25", "Retrieve", False) == "Instruct: Retrieve\nQuery: what is bm25"
    assert LLM_SPECIAL_TOKENS == ["<instruct>", "<query>", "<response>"]


@pytest.mark.parametrize(
    ("type_", "special", "expected"),
    [
        ("symmetric_sts", True, "<instruct>Same meaning\n<query>a cat sat\n<response>"),
        ("symmetric_clustering", False, "Instruct: Same meaning\nQuery: a cat sat\nResponse:"),
        ("retrieval", True, "a cat sat"),
        ("symmetric_class", True, "a cat sat"),
        ("only_1neg", False, "a cat sat"),
    ],
)
def test_format_passage(type_, special, expected):
    assert format_passage("a cat sat", "Same meaning", type_, special) == expected


def test_format_passage_cuts_before_the_suffix(minilm_tokenizer):
    text = format_passage(
        "word " * 300, "Same meaning", "symmetric_sts", True, tokenizer=minilm_tokenizer, passage_max_len=40
    )
    assert text.startswith("<instruct>Same meaning\n<query>word word") and text.endswith("word\n<response>")
    assert n_tokens(minilm_tokenizer, text) == 40


# -- token-level helpers ---------------------------------------------------------------------------------


def test_truncate_text_keeps_the_original_characters(minilm_tokenizer):
    text = "Paris is the Capital of FRANCE, and its largest city."
    assert truncate_text(text, minilm_tokenizer, 100) is text
    # MiniLM lower-cases; decoding ids would give "paris is the capital of france"; offsets keep the original.
    assert truncate_text(text, minilm_tokenizer, 6) == "Paris is the Capital of FRANCE"
    assert truncate_text(text, minilm_tokenizer, 0) == ""
    for limit in range(1, 14):
        cut = truncate_text(text, minilm_tokenizer, limit)
        assert text.startswith(cut) and count_tokens(cut, minilm_tokenizer) <= limit


# -- in-context examples ---------------------------------------------------------------------------------


def test_icl_query_layout_with_special_tokens(minilm_tokenizer):
    examples = [("who wrote hamlet", "Shakespeare wrote it."), ("boiling point of water", "100 degrees C.")]
    query = build_icl_query("capital of france", PROMPT, examples, minilm_tokenizer, query_max_len=256)
    assert query == (
        f"<instruct>{PROMPT}\n<query>who wrote hamlet\n<response>Shakespeare wrote it.\n\n"
        f"<instruct>{PROMPT}\n<query>boiling point of water\n<response>100 degrees C.\n\n"
        f"<instruct>{PROMPT}\n<query>capital of france\n<response>"
    )


def test_icl_query_layout_without_special_tokens(minilm_tokenizer):
    query = build_icl_query(
        "capital of france",
        PROMPT,
        [("who wrote hamlet", "Shakespeare.")],
        minilm_tokenizer,
        use_special_tokens=False,
        query_max_len=256,
    )
    # The seed's plain analogues: "\nResponse: " inside examples, "\nResponse:" closing the query.
    assert query == (
        f"Instruct: {PROMPT}\nQuery: who wrote hamlet\nResponse: Shakespeare.\n\n"
        f"Instruct: {PROMPT}\nQuery: capital of france\nResponse:"
    )


def test_icl_query_without_examples_is_the_plain_training_query(minilm_tokenizer):
    expected = f"<instruct>{PROMPT}\n<query>capital of france\n<response>"
    assert build_icl_query("capital of france", PROMPT, [], minilm_tokenizer, query_max_len=64) == expected


def test_icl_examples_fit_below_512_tokens_unlike_the_seed(minilm_tokenizer):
    examples = [("who wrote hamlet", "Shakespeare wrote it.")]
    with_fix = build_icl_query("capital of france", PROMPT, examples, minilm_tokenizer, query_max_len=256)
    assert "who wrote hamlet" in with_fix
    # The seed's fixed budget (query_max_len - 512) admits nothing at 256 tokens.
    seed_budget = build_icl_query(
        "capital of france", PROMPT, examples, minilm_tokenizer, query_max_len=256, icl_budget=256 - 512
    )
    assert seed_budget == f"<instruct>{PROMPT}\n<query>capital of france\n<response>"


def test_icl_examples_are_truncated_to_their_limits(minilm_tokenizer):
    long_query = " ".join(f"q{i}" for i in range(200))
    long_passage = " ".join(f"passage{i}" for i in range(400))
    query = build_icl_query(
        "capital of france",
        "Retrieve",
        [(long_query, long_passage)],
        minilm_tokenizer,
        query_max_len=1024,
        example_query_max_len=30,
        example_passage_max_len=50,
    )
    example_text, final = query.split("\n\n")
    example_query, example_passage = example_text.split("\n<response>")
    # The example query limit covers the whole prompted query, instruction included.
    assert example_query.startswith("<instruct>Retrieve\n<query>q0 q1")
    assert count_tokens(example_query, minilm_tokenizer) == 30
    assert long_passage.startswith(example_passage) and count_tokens(example_passage, minilm_tokenizer) == 50
    assert final == "<instruct>Retrieve\n<query>capital of france\n<response>"


def test_icl_budget_stops_at_the_first_example_that_does_not_fit(minilm_tokenizer):
    small, big = ("short", "tiny answer"), ("long", " ".join(["word"] * 90))
    query_only = count_tokens(get_query_prompt("capital", "Retrieve", True), minilm_tokenizer)
    rendered_small = count_tokens(
        "<instruct>Retrieve\n<query>short\n<response>tiny answer\n\n", minilm_tokenizer
    )
    # Room for the small example but not the big one: the seed stops at the big one, skipping what follows.
    max_len = (
        2 + 3 + query_only + rendered_small + 10
    )  # [CLS]/[SEP], "\n<response>", query, one small example
    order_small_first = build_icl_query(
        "capital", "Retrieve", [small, big, small], minilm_tokenizer, query_max_len=max_len
    )
    assert order_small_first.count("<query>short") == 1 and "word" not in order_small_first
    order_big_first = build_icl_query(
        "capital", "Retrieve", [big, small], minilm_tokenizer, query_max_len=max_len
    )
    assert order_big_first == "<instruct>Retrieve\n<query>capital\n<response>"
    capped = build_icl_query(
        "capital", "Retrieve", [small], minilm_tokenizer, query_max_len=512, icl_budget=rendered_small - 1
    )
    assert "short" not in capped


@pytest.mark.parametrize("query_max_len", [24, 48, 100, 300])
@pytest.mark.parametrize("special", [True, False])
def test_icl_query_always_fits_and_keeps_the_query_and_suffix(minilm_tokenizer, query_max_len, special):
    rng = random.Random(query_max_len)
    pairs = [
        (" ".join(["term"] * rng.randint(1, 80)), " ".join(["fact"] * rng.randint(1, 150))) for _ in range(6)
    ]
    query = build_icl_query(
        "capital of france",
        "Retrieve",
        pairs,
        minilm_tokenizer,
        use_special_tokens=special,
        query_max_len=query_max_len,
    )
    assert n_tokens(minilm_tokenizer, query) <= query_max_len
    assert query.endswith(
        get_query_prompt("capital of france", "Retrieve", special)
        + ("\n<response>" if special else "\nResponse:")
    )


def test_icl_long_query_is_cut_from_the_right_keeping_the_suffix(minilm_tokenizer):
    query = build_icl_query(
        " ".join(["word"] * 100), "Retrieve", [("a", "b")], minilm_tokenizer, query_max_len=32
    )
    assert query.startswith("<instruct>Retrieve\n<query>word") and query.endswith("word\n<response>")
    assert n_tokens(minilm_tokenizer, query) == 32
    # reserve_tokens keeps room for what the collator appends (e.g. an EOS for last-token pooling).
    reserved = build_icl_query(
        " ".join(["word"] * 100), "Retrieve", [], minilm_tokenizer, query_max_len=32, reserve_tokens=1
    )
    assert n_tokens(minilm_tokenizer, reserved) == 31
    with pytest.raises(ConfigError, match="query_max_len"):
        build_icl_query("q", "Retrieve", [], minilm_tokenizer, query_max_len=5)


def test_sample_icl_examples_excludes_own_pair_and_draws_zero_to_max():
    pairs = [(f"q{i}", f"p{i}") for i in range(8)]
    counts = set()
    for seed in range(200):
        chosen = sample_icl_examples(pairs, 3, random.Random(seed))
        counts.add(len(chosen))
        assert ("q3", "p3") not in chosen and len(set(chosen)) == len(chosen)
    assert counts == {0, 1, 2, 3, 4, 5}
    # Deterministic for a seeded generator.
    assert sample_icl_examples(pairs, 0, random.Random(9)) == sample_icl_examples(pairs, 0, random.Random(9))
    # A batch smaller than the draw gives what there is (the seed raised here).
    assert all(
        sample_icl_examples([("a", "b"), ("c", "d")], 0, random.Random(s)) in ([], [("c", "d")])
        for s in range(50)
    )
    assert sample_icl_examples([("a", "b")], 0, random.Random(1), max_examples=5) == []
