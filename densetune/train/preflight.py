"""Pre-flight: read and check every input a training run will need before the model is loaded.

A bad line in the evaluation qrels or a training row that cannot make a group would otherwise end the run
after the model has loaded and steps have run (hours, on a real run). :func:`preflight` reads the training
files, the dev files, the BEIR evaluation folder (corpus, queries, qrels) and the reranker's first-stage run,
with the same readers the run uses later (the stores and corpora are cached, so nothing is read twice), and
counts the training rows the group selector could not use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from densetune.config import instantiate
from densetune.errors import DataError
from densetune.train.schema import RecipeConfig

# Negative modes that stop on a row without negatives (the others leave such a row out and count it).
_STOPPING_MODES = ("cycle", "pool")


@dataclass
class Inputs:
    """What :func:`preflight` read, for the set-up to use: the stores, the selector, rows to leave out."""

    selector: Any
    train_store: Any
    dev_store: Any | None
    skip_rows: np.ndarray  # store indices of training rows left out (data.skip_invalid=true)


def preflight(cfg: RecipeConfig) -> Inputs:
    """Read and validate the run's inputs; returns them for :meth:`TrainRecipe.setup`.

    Raises:
        DataError: the first bad record of any input (file, line, field), or training / dev rows without
            negatives where each group needs some (their count, the first one, and the fixes).
        ConfigError: a bad selector node.
    """
    from densetune.data.store import load_examples

    dcfg, ecfg = cfg.data, cfg.eval
    selector = instantiate(dcfg.selector, "data.selector", seed=cfg.seed)
    train = load_examples(
        dcfg.train, skip_invalid=dcfg.skip_invalid, cache_dir=dcfg.cache_dir, split=dcfg.split
    )
    need = _needed_negatives(selector)
    skip = short_rows(train, need, "data.selector.n_passages", skip=dcfg.skip_invalid)
    dev = None
    if ecfg.dev:
        dev = load_examples(
            ecfg.dev, skip_invalid=dcfg.skip_invalid, cache_dir=dcfg.cache_dir, split=ecfg.dev_split
        )
        short_rows(dev, ecfg.dev_n_passages - 1, "eval.dev_n_passages", skip=False)
    if ecfg.beir_dir:
        _check_beir(ecfg.beir_dir, ecfg.split, dcfg.cache_dir, ecfg.rerank_run, ecfg.rerank_top_k)
    return Inputs(selector=selector, train_store=train, dev_store=dev, skip_rows=skip)


def _needed_negatives(selector: Any) -> int:
    """Negatives each group needs where the selector stops on a row without any (0: it never stops)."""
    if getattr(selector, "negative", None) not in _STOPPING_MODES:
        return 0
    return int(getattr(selector, "num_negatives", 0) or 0)


def short_rows(store: Any, need: int, key: str, *, skip: bool) -> np.ndarray:
    """Store indices of rows without negatives when groups need ``need``; raises unless ``skip``.

    Raises:
        DataError: at the first such row, with how many there are and the fixes that exist: mining with
            ``--fill random`` / ``--drop-empty``, ``data.skip_invalid=true``, or ``n_passages=1``.
    """
    if need <= 0 or len(store) == 0:
        return np.zeros(0, dtype=np.int64)
    rows = np.flatnonzero(store.column("n_neg") == 0).astype(np.int64)
    if rows.size == 0 or skip:
        return rows
    first = store.column("source")[int(rows[0])]
    path, _, line = first.rpartition(":")
    raise DataError(
        f"{rows.size} of {len(store)} rows have no negatives, but each group needs {need} ({key}={need + 1}); "
        "this is the first. Fixes: mine again with `densetune mine ... --fill random` (random corpus negatives "
        "where the margin left none) or `--drop-empty`, leave such rows out with data.skip_invalid=true "
        f"(counted), or train on in-batch negatives only with {key}=1",
        path or first,
        int(line) if line.isdigit() else None,
    )


def _check_beir(beir_dir: str, split: str, cache_dir: str | None, rerank_run: str | None, top_k: int) -> None:
    """Corpus, queries and the split's qrels of the evaluation folder; the rerank run and its ids."""
    from densetune.data.beir import load_beir
    from densetune.data.trec import read_run
    from densetune.retrieval.rerank import check_run_ids

    data = load_beir(beir_dir, split, cache_dir=cache_dir)
    if rerank_run is not None:
        check_run_ids(read_run(rerank_run), data.queries, data.corpus, top_k, rerank_run)
