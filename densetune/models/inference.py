"""The batch loop of BiEncoder.encode_texts and CrossEncoder.score_pairs: longest first, eval mode, input order,
in the model's inference precision (:mod:`densetune.precision`), tokenising ahead of the GPU."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor, nn

from densetune.hostmem import reuse_freed_memory
from densetune.precision import INFERENCE_ATTR

# Threads that tokenise batches ahead of the one on the GPU (Hugging Face tokenizers release the GIL). One call
# of 256 texts tokenised 3,400 passages/s on a 16-core H200 host, a third of the tokenizer's rate over many texts
# and below the forward's (docs/BENCHMARKS.md): several calls at once keep the GPU fed. A quarter of the cores,
# at most 4; each thread keeps two batches in flight.
TOKENIZE_THREADS = max(1, min(4, (os.cpu_count() or 1) // 4))


def map_longest_first(
    model: nn.Module,
    lengths: Sequence[int],
    batch_size: int,
    prepare: Callable[[list[int]], Any],
    run: Callable[[Any], Tensor],
    out: Tensor,
    *,
    desc: str,
    show_progress: bool = False,
) -> Tensor:
    """Fill ``out[i]`` for every item i with ``run(prepare(index))``, ``index`` a batch of item indices.

    ``prepare`` is the CPU half (tokenising the batch's texts), ``run`` the model half (moving the inputs to
    the device and the forward). On a GPU the next batches are prepared in threads while the current one
    runs (:data:`TOKENIZE_THREADS`), so tokenising does not leave the GPU idle; on a CPU they alternate (both would use the same cores).
    Items go longest first (by ``lengths``) so each batch pads little; ``model`` is in eval mode meanwhile
    and goes back to its training mode after, even on an error. ``run`` returns one row per index, moved
    to the CPU as float32 before it is stored; ``desc`` names the tqdm bar shown with ``show_progress``.
    ``run`` runs under the model's ``inference_precision`` (set by
    :func:`densetune.precision.set_inference_precision`; none: the caller's context, fp32 by default).
    """
    precision = getattr(model, INFERENCE_ATTR, None)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    on_gpu = next(model.parameters(), torch.empty(0)).device.type == "cuda"
    was_training = model.training
    model.eval()
    # one autocast context for all batches: autocast keeps its bf16 copies of the weights until it exits
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    try:
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(batches), desc=desc, unit="batch")
        # on a CPU the activations are host memory: reuse the last batch's pages (densetune/hostmem.py)
        with autocast, reuse_freed_memory(not on_gpu):
            threads = TOKENIZE_THREADS if on_gpu else 0
            for index, inputs in _prepared(batches, prepare, ahead=2 * threads, threads=threads):
                out[torch.tensor(index, dtype=torch.long)] = run(inputs).float().cpu()
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        model.train(was_training)
    return out


def _prepared(
    batches: list[list[int]], prepare: Callable[[list[int]], Any], *, ahead: int, threads: int = 1
) -> Iterator[tuple[list[int], Any]]:
    """``(index, prepare(index))`` for each batch in order; with ``ahead`` > 0 up to that many batches are
    prepared in ``threads`` background threads before they are needed (yielded in order all the same)."""
    if ahead <= 0:
        for index in batches:
            yield index, prepare(index)
        return
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="densetune-tokenize") as pool:
        pending = [pool.submit(prepare, index) for index in batches[:ahead]]
        for i, index in enumerate(batches):
            inputs = pending[i].result()
            if i + ahead < len(batches):
                pending.append(pool.submit(prepare, batches[i + ahead]))
            pending[i] = None  # the batch's tokens are freed once it has run
            yield index, inputs
