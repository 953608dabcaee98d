"""One prompt for training and inference: the collator's texts are the texts encoding and the saved model use.

The recipe hands the collator the loaded model's :class:`~densetune.data.prompts.Prompt` (no copied strings), so
a prompt the old bridge mangled (a folder prompt ending in a newline lost it to ``rstrip`` and got a space
instead) trains exactly as it is used; settings that would make the two differ are refused in one line.
"""

from __future__ import annotations

import json

import pytest
from train_helpers import make_inline_data, run_recipe, tiny_recipe

from densetune import cli
from densetune.errors import ConfigError
from densetune.models.biencoder import BiEncoder
from densetune.train.config import from_dict, merge_defaults
from densetune.train.loop import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUERY_PROMPT = "Instruct: find the passage\nQuery:\n"
DOC_PROMPT = "Passage:\n"


@pytest.fixture(scope="module")
def prompted_model(tiny_bert, tmp_path_factory) -> str:
    """The tiny BERT saved with sentence-transformers style prompts (prepended verbatim, newline-ended)."""
    model = BiEncoder.from_pretrained(tiny_bert)
    model.config.query_prefix, model.config.passage_prefix = QUERY_PROMPT, DOC_PROMPT
    model.config.prefix_separator = ""
    out = tmp_path_factory.mktemp("prompted") / "model"
    model.save_pretrained(out)
    return str(out)


def _recipe(model_path: str, tmp_path, **sections):
    data = make_inline_data(tmp_path / "train.jsonl", 8)
    return from_dict(merge_defaults(tiny_recipe(model_path, data, tmp_path / "out", **sections)))


def _tokenized_texts(monkeypatch) -> list[str]:
    """Every text any fast tokenizer is called on from now on (what a model reads, prompts applied)."""
    from transformers import PreTrainedTokenizerBase

    seen: list[str] = []
    call = PreTrainedTokenizerBase.__call__

    def spy(self, text=None, *args, **kwargs):
        seen.extend([text] if isinstance(text, str) else list(text or []))
        return call(self, text, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", spy)
    return seen


def test_collator_saved_model_and_encode_read_one_prompt(prompted_model, tmp_path, monkeypatch):
    cfg = _recipe(
        prompted_model,
        tmp_path,
        train={"max_steps": 2},
        output={"dir": str(tmp_path / "out"), "save_model": True},
    )
    recipe = run_recipe(cfg)
    assert recipe.collator.prompt is recipe.dataset.prompt  # one object: task layer and prefixes
    group = recipe.dataset[0]
    queries, docs, _ = recipe.collator.texts([group])
    assert queries == [QUERY_PROMPT + group.query]  # the newline kept, no space added
    assert docs[0] == DOC_PROMPT + group.docs[0].text

    saved = tmp_path / "out" / "model"
    st = json.loads((saved / "config_sentence_transformers.json").read_text())
    assert st["prompts"] == {"query": QUERY_PROMPT, "document": DOC_PROMPT}

    # `densetune encode` of the saved model feeds its tokenizer exactly the collator's strings.
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": group.query}) + "\n")
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d", "text": group.docs[0].text}) + "\n")
    seen = _tokenized_texts(monkeypatch)
    for side in ("queries", "corpus"):
        out = tmp_path / f"enc-{side}"
        args = [
            "encode",
            "--model",
            str(saved),
            f"--{side}",
            str(tmp_path / f"{side}.jsonl"),
            "--out",
            str(out),
        ]
        assert cli.main(args) == 0
    assert queries[0] in seen and docs[0] in seen


def _setup_error(cfg) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        TrainRecipe(cfg).setup()
    assert "\n" not in str(err.value)
    return err.value


def test_a_collator_prefix_other_than_the_models_is_refused(tiny_bert, tmp_path):
    cfg = _recipe(tiny_bert, tmp_path, data={"collator": {"query_prefix": "query:", "q_max_len": 16}})
    cfg.model.kwargs = {"query_prefix": "search_query:"}  # the loader takes this one over the collator's
    err = _setup_error(cfg)
    assert err.key == "data.collator.query_prefix" and "'search_query: '" in err.message


def test_dataset_instructions_with_model_prefixes_are_refused(prompted_model, tmp_path):
    cfg = _recipe(prompted_model, tmp_path, data={"collator": {"use_dataset_instruction": True}})
    assert _setup_error(cfg).key == "data.collator.use_dataset_instruction"


def test_a_collator_without_a_prompt_cannot_drop_the_models_prefixes(prompted_model, tmp_path):
    collator = {"_target_": "densetune.data.flag_collators.RetrievalDataCollator"}
    err = _setup_error(_recipe(prompted_model, tmp_path, data={"collator": collator}))
    assert err.key == "data.collator" and "RetrievalDataCollator takes no prompt" in err.message
