"""The batch loop of BiEncoder.encode_texts and CrossEncoder.score_pairs: longest first, eval mode, input order,
in the model's inference precision (:mod:`densetune.precision`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from densetune.precision import INFERENCE_ATTR


def map_longest_first(
    model: nn.Module,
    lengths: Sequence[int],
    batch_size: int,
    step: Callable[[list[int]], Tensor],
    out: Tensor,
    *,
    desc: str,
    show_progress: bool = False,
) -> Tensor:
    """Fill ``out[i]`` for every item i with ``step(index)``, ``index`` a batch of item indices.

    Items go longest first (by ``lengths``) so each batch pads little; ``model`` is in eval mode meanwhile
    and goes back to its training mode after, even on an error. ``step`` returns one row per index, moved
    to the CPU as float32 before it is stored; ``desc`` names the tqdm bar shown with ``show_progress``.
    ``step`` runs under the model's ``inference_precision`` (set by
    :func:`densetune.precision.set_inference_precision`; none: the caller's context, fp32 by default).
    """
    precision = getattr(model, INFERENCE_ATTR, None)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    was_training = model.training
    model.eval()
    # one autocast context for all batches: autocast keeps its bf16 copies of the weights until it exits
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    try:
        starts = range(0, len(order), batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=desc, unit="batch")
        with autocast:
            for start in starts:
                index = order[start : start + batch_size]
                out[torch.tensor(index, dtype=torch.long)] = step(index).float().cpu()
    finally:
        model.train(was_training)
    return out
