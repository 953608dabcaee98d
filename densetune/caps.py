"""The environment variables that cap a run's size, for smoke runs of any documented command.

README ("Capping a run") documents them; tests/test_docs.py runs every documented command under them:

- ``DENSETUNE_MAX_STEPS=N``: training stops after N optimizer steps (:mod:`densetune.train.loop`);
- ``DENSETUNE_MAX_BATCH=N``: at most N queries per device in a training batch (:mod:`densetune.train.loop`);
- ``DENSETUNE_MAX_QUERIES=N``: a qrels file keeps its first N queries (:func:`densetune.data.trec.read_qrels`),
  so every command reading a BEIR split (train, mine, encode, search, evaluate, rerank) uses those N;
- ``DENSETUNE_MAX_CORPUS=N``: a corpus keeps its first N documents plus, for a BEIR directory, every document
  its qrels (capped as above) judge, so training and evaluation find their documents
  (:func:`densetune.data.corpus.load_corpus`).

Each cap prints one line to stderr where it cuts something, so a capped run never passes for a full one, and
the data caps are part of every cache key (:func:`data_caps`), so a capped cache never serves a full run.
"""

from __future__ import annotations

import os
import sys

from densetune.errors import ConfigError

MAX_STEPS = "DENSETUNE_MAX_STEPS"
MAX_BATCH = "DENSETUNE_MAX_BATCH"
MAX_QUERIES = "DENSETUNE_MAX_QUERIES"
MAX_CORPUS = "DENSETUNE_MAX_CORPUS"

_said: set[str] = set()


def env_cap(name: str) -> int | None:
    """A positive integer from the environment variable ``name``, or None when it is not set.

    Raises:
        ConfigError: the variable holds anything but a positive integer.
    """
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(name, f"expected a positive integer in the environment variable, got {value!r}")
    return int(value)


def data_caps() -> dict[str, int]:
    """The data caps in force (``{name: N}``; empty when none is set): what a cached read also depends on."""
    caps = {name: env_cap(name) for name in (MAX_QUERIES, MAX_CORPUS)}
    return {name: n for name, n in caps.items() if n is not None}


def notice(message: str) -> None:
    """Print ``message`` to stderr once per process (a file read twice in one command says it once)."""
    if message not in _said:
        _said.add(message)
        print(message, file=sys.stderr, flush=True)
