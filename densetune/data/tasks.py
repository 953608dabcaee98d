"""Tasks: FlagEmbedding's TASK_CONFIG (each instruction set's per-task instructions and, for LLM-Embedder,
per-task training settings) and the one place it is looked up: :func:`train_config_name`
(``use_train_config``), :func:`training_table` (a set's training settings), :func:`train_config_selection`
(its selection settings in GroupSelector's names), :func:`task_settings_table` (a selector's per-task
settings: those overlaid with ``task_settings``), :func:`task_instruction`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from densetune.errors import ConfigError

TASK_CONFIG: dict[str, dict[str, Any]] = {
    "llm-embedder": {
        # Prepended verbatim, trailing space included: instruction["query"] + query, instruction["key"] + key.
        "instruction": {
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
        },
        # Used when prepare_train_dataset(use_train_config=True): select_positive / select_negative map to
        # GroupSelector(positive=, negative=); the weights and temperature configure the losses.
        "training": {
            "qa": {
                "select_positive": "first",
                "select_negative": "random",
                "max_sample_num": None,
                "teacher_scores_margin": None,
                "teacher_scores_min": None,
                "contrastive_weight": 0,
                "stable_distill": True,
            },
            "convsearch": {
                "select_positive": "first",
                "select_negative": "random",
                "max_sample_num": None,
                "teacher_scores_margin": None,
                "teacher_scores_min": None,
                "distill_weight": 0,
                "stable_distill": False,
            },
            "chat": {
                "select_positive": "teacher",
                "select_negative": "random",
                "max_sample_num": None,
                "teacher_scores_margin": None,
                "teacher_scores_min": None,
                "distill_weight": 1.0,
                "contrastive_weight": 0,
                "teacher_temperature": 0.1,
                "stable_distill": False,
            },
            "lrlm": {
                "select_positive": "teacher",
                "select_negative": "random",
                "max_sample_num": 10000,
                "teacher_scores_margin": 0.1,
                "teacher_scores_min": None,
                "distill_weight": 1.0,
                "contrastive_weight": 0,
                "teacher_temperature": 0.1,
                "stable_distill": False,
            },
            "icl": {
                "select_positive": "random",
                "select_negative": "random",
                "max_sample_num": None,
                "teacher_scores_margin": None,
                "teacher_scores_min": None,
                "contrastive_weight": 0,
                "stable_distill": True,
            },
            "tool": {
                "select_positive": "first",
                "select_negative": "random",
                "max_sample_num": None,
                "teacher_scores_margin": None,
                "teacher_scores_min": None,
                "distill_weight": 0,
                "stable_distill": False,
            },
        },
    },
    # Baselines the LLM-Embedder code evaluates against; the same instruction for every task.
    "bge": {
        "instruction": defaultdict(
            lambda: {"query": "Represent this sentence for searching relevant passages: ", "key": ""}
        )
    },
    "e5": {"instruction": defaultdict(lambda: {"query": "query: ", "key": "passage: "})},
    "instructor": {
        "instruction": {
            "qa": {
                "query": "Represent the query for retrieving supporting documents: ",
                "key": "Represent the document for retrieval: ",
            },
            "convsearch": {
                "query": "Represent the query and context for retrieving supporting passages: ",
                "key": "Represent the passage for retrieval: ",
            },
            "chat": {
                "query": "Represent the dialogue for retrieving useful historical dialogues: ",
                "key": "Represent the historical dialogue for retrieval: ",
            },
            "lrlm": {
                "query": "Represent the text chunk for retrieving useful historical chunks: ",
                "key": "Represent the historical text chunk for retrieval: ",
            },
            "icl": {
                "query": "Represent the example for retrieving duplicate examples: ",
                "key": "Represent the example for retrieval: ",
            },
            "tool": {
                "query": "Represent the user request for retrieving duplicate examples: ",
                "key": "Represent the tool description for retrieval: ",
            },
        },
    },
}
"""FlagEmbedding LLM-Embedder's ``TASK_CONFIG``, same structure and values.

``TASK_CONFIG["llm-embedder"]["instruction"][task]`` is ``{"query": ..., "key": ...}`` for the tasks
qa, convsearch, chat, lrlm, icl, tool; ``TASK_CONFIG["llm-embedder"]["training"][task]`` holds that task's
selection settings (``select_positive``, ``select_negative``, ``max_sample_num``, ``teacher_scores_margin``,
``teacher_scores_min``, ``stable_distill``) and loss settings (``contrastive_weight``, ``distill_weight``,
``teacher_temperature``) where the seed sets them. ``bge``, ``e5`` and ``instructor`` give the baselines'
instructions (bge and e5 the same for any task).
"""


def train_config_name(value: bool | str | None) -> str | None:
    """``use_train_config`` as a TASK_CONFIG name (True means ``"llm-embedder"``), or None when off.

    Raises:
        ConfigError: a value that is neither a bool nor a TASK_CONFIG name with a ``training`` section.
    """
    if value is False or value is None:
        return None
    name = "llm-embedder" if value is True else value
    if not isinstance(name, str) or "training" not in TASK_CONFIG.get(name, {}):
        names = [n for n, c in TASK_CONFIG.items() if "training" in c]
        raise ConfigError(
            "use_train_config",
            f"expected true, false or a TASK_CONFIG name ({', '.join(names)}), got {value!r}",
        )
    return name


def training_table(config: str) -> dict[str, dict[str, Any]]:
    """``TASK_CONFIG[config]["training"]``: each task's training settings (selection and loss keys alike),
    read by :func:`train_config_selection` and :func:`densetune.losses.train_config_loss`.

    Raises:
        ConfigError: ``config`` is not a TASK_CONFIG entry with a ``training`` table.
    """
    table = TASK_CONFIG.get(config, {}).get("training")
    if table is None:
        with_training = [name for name, entry in TASK_CONFIG.items() if "training" in entry]
        raise ConfigError(
            "use_train_config",
            f"TASK_CONFIG has no training settings for {config!r}; expected true or one of "
            f"{', '.join(with_training)}",
        )
    return table


# What a GroupSelector ``task_settings`` entry may set, and the names the same settings have in
# TASK_CONFIG[...]["training"] (the seed's prepare_train_dataset arguments). The table's loss keys belong to
# densetune.losses.
TASK_SETTING_KEYS = (
    "positive",
    "negative",
    "teacher_scores_min",
    "teacher_scores_margin",
    "stable_distill",
    "max_samples",
)
_TRAIN_CONFIG_NAMES = {
    "select_positive": "positive",
    "select_negative": "negative",
    "teacher_scores_min": "teacher_scores_min",
    "teacher_scores_margin": "teacher_scores_margin",
    "stable_distill": "stable_distill",
    "max_sample_num": "max_samples",
}


def train_config_selection(config: str = "llm-embedder") -> dict[str, dict[str, Any]]:
    """The per-task selection settings of ``TASK_CONFIG[config]["training"]``, in GroupSelector's names.

    ``select_positive`` -> ``positive``, ``select_negative`` -> ``negative``, ``max_sample_num`` ->
    ``max_samples``; ``teacher_scores_min``, ``teacher_scores_margin`` and ``stable_distill`` keep their names.
    The table's loss settings are read by :func:`densetune.losses.train_config_loss`.

    Raises:
        ConfigError: ``config`` is not a TASK_CONFIG entry with a ``training`` table.

    Example:
        >>> train_config_selection()["chat"]["positive"]
        'teacher'
    """
    return {
        task: {_TRAIN_CONFIG_NAMES[k]: v for k, v in entry.items() if k in _TRAIN_CONFIG_NAMES}
        for task, entry in training_table(config).items()
    }


def task_settings_table(
    task_settings: Mapping[str, Mapping[str, Any] | None] | None, use_train_config: str | None
) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]]]:
    """A GroupSelector's per-task settings: ``TASK_CONFIG[use_train_config]``'s (:func:`train_config_selection`)
    overlaid, key by key, with ``task_settings``.

    Returns:
        ``({task: settings}, {task: the keys task_settings set explicitly})``; the second names the origin of
        a bad value in errors (``task_settings`` or ``use_train_config``).

    Raises:
        ConfigError: ``task_settings`` not a mapping of mappings, or a key outside :data:`TASK_SETTING_KEYS`,
            naming ``task_settings.TASK``.
    """
    table = train_config_selection(use_train_config) if use_train_config is not None else {}
    explicit: dict[str, set[str]] = {}
    if task_settings is None:
        return table, explicit
    if not isinstance(task_settings, Mapping):
        raise ConfigError(
            "task_settings", f"expected a mapping {{task: {{setting: value}}}}, got {task_settings!r}"
        )
    for task, settings in task_settings.items():
        key = f"task_settings.{task}"
        if settings is None:
            settings = {}
        if not isinstance(settings, Mapping):
            raise ConfigError(key, f"expected a mapping of settings (may be empty), got {settings!r}")
        unknown = sorted(set(settings) - set(TASK_SETTING_KEYS))
        if unknown:
            raise ConfigError(
                key, f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(TASK_SETTING_KEYS)}"
            )
        table[str(task)] = {**table.get(str(task), {}), **settings}
        explicit[str(task)] = set(settings)
    return table, explicit


def task_instruction(task: str, config: str = "llm-embedder") -> dict[str, str]:
    """``TASK_CONFIG[config]["instruction"][task]``, with an error that lists the valid names (the lookup of
    :meth:`densetune.data.prompts.Prompt.instruct`).

    Raises:
        ConfigError: unknown ``config`` or ``task``.
    """
    if config not in TASK_CONFIG:
        raise ConfigError("config", f"unknown instruction set {config!r}; valid: {', '.join(TASK_CONFIG)}")
    instructions = TASK_CONFIG[config]["instruction"]
    if not isinstance(instructions, defaultdict) and task not in instructions:
        raise ConfigError(
            "task",
            f"TASK_CONFIG[{config!r}] has no instruction for task {task!r}; valid: {', '.join(instructions)} "
            "(the task is an LLM-Embedder file's parent directory or its 'task' field)",
        )
    return instructions[task]
