"""Pooling: turn token states [B, L, H] into one vector per sequence [B, H].

API:
    pool(hidden, attention_mask, mode) -> Tensor [B, H]
    resolve_pooling(mode) -> canonical name ("mean" | "cls" | "last" | "weighted_mean")
    to_sentence_transformers(mode) / from_sentence_transformers(config) -> mode names of
        sentence-transformers' ``1_Pooling/config.json``

Every mode reads only positions where ``attention_mask`` is 1, so left and right padding give the same
vector. Sums are accumulated in float32 for half-precision inputs; the result has the input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

POOLING_MODES = ("mean", "cls", "last", "weighted_mean")

# Names used by NeMo Automodel, FlagEmbedding, Tevatron and sentence-transformers.
POOLING_ALIASES = {
    "avg": "mean",
    "average": "mean",
    "mean_tokens": "mean",
    "cls_token": "cls",
    "first": "cls",
    "last_token": "last",
    "lasttoken": "last",
    "eos": "last",
    "weighted_avg": "weighted_mean",
    "weightedmean": "weighted_mean",
    "weighted_mean_tokens": "weighted_mean",
}

# sentence-transformers Pooling mode name for each of ours (and back).
_TO_ST = {"mean": "mean", "cls": "cls", "last": "lasttoken", "weighted_mean": "weightedmean"}
_ST_LEGACY_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "last",
    "pooling_mode_weightedmean_tokens": "weighted_mean",
}


def resolve_pooling(mode: str) -> str:
    """Canonical pooling name for ``mode`` or an alias of it.

    Raises:
        ValueError: naming the valid modes and aliases.
    """
    name = str(mode).strip().lower()
    name = POOLING_ALIASES.get(name, name)
    if name not in POOLING_MODES:
        valid = ", ".join(POOLING_MODES)
        aliases = ", ".join(f"{a}->{c}" for a, c in sorted(POOLING_ALIASES.items()))
        raise ValueError(f"unknown pooling mode {mode!r}: expected one of {valid} (aliases: {aliases})")
    return name


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Masked mean over real tokens. hidden [B, L, H], attention_mask [B, L] -> [B, H]."""
    acc = _accumulation_dtype(hidden.dtype)
    mask = attention_mask.unsqueeze(-1).to(acc)  # [B, L, 1]
    summed = (hidden.to(acc) * mask).sum(dim=1)  # [B, H]
    count = mask.sum(dim=1).clamp(min=1e-9)  # [B, 1]; an all-padding row gives zeros, not NaN
    return (summed / count).to(hidden.dtype)


def cls_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """State of the first real token (the first position under left padding is a pad)."""
    first = attention_mask.to(torch.int32).argmax(dim=1)  # [B]: index of the first 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]


def last_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """State of the last real token, for left or right padding (EOS pooling for decoder embedders)."""
    seq_len = attention_mask.shape[1]
    # argmax returns the first maximum, so on the flipped mask it finds the last 1 from the end.
    last = seq_len - 1 - attention_mask.flip(dims=[1]).to(torch.int32).argmax(dim=1)  # [B]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def weighted_mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Position-weighted mean (SGPT / GritLM): the k-th real token has weight k.

    Later tokens of a causal decoder have seen more of the text, so they weigh more. Weights count real
    tokens only, so padding on either side does not shift them (as sentence-transformers' weightedmean).
    """
    acc = _accumulation_dtype(hidden.dtype)
    mask = attention_mask.to(acc)  # [B, L]
    weights = (mask.cumsum(dim=1) * mask).unsqueeze(-1)  # [B, L, 1]: 1, 2, ... over real tokens, 0 on pads
    summed = (hidden.to(acc) * weights).sum(dim=1)  # [B, H]
    return (summed / weights.sum(dim=1).clamp(min=1e-9)).to(hidden.dtype)


_POOLERS = {"mean": mean_pool, "cls": cls_pool, "last": last_pool, "weighted_mean": weighted_mean_pool}


def pool(hidden: Tensor, attention_mask: Tensor, mode: str) -> Tensor:
    """Pool token states into one vector per sequence.

    Args:
        hidden: token states [B, L, H].
        attention_mask: [B, L], 1 for real tokens and 0 for padding (either side).
        mode: ``mean`` | ``cls`` | ``last`` | ``weighted_mean`` or an alias (``avg``, ``last_token``,
            ``eos``, ``weighted_avg``, ...).

    Returns:
        [B, H] in ``hidden``'s dtype.
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"pool expects hidden [B, L, H] and attention_mask [B, L], got {tuple(hidden.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    return _POOLERS[resolve_pooling(mode)](hidden, attention_mask)


def to_sentence_transformers(mode: str) -> str:
    """sentence-transformers ``Pooling`` mode name (``lasttoken``, ``weightedmean``, ...) for ``mode``."""
    return _TO_ST[resolve_pooling(mode)]


def from_sentence_transformers(config: dict) -> str:
    """Pooling mode from a sentence-transformers ``1_Pooling/config.json`` (new or legacy keys).

    Raises:
        ValueError: for modes densetune does not implement (max, mean_sqrt_len_tokens, combinations).
    """
    if "pooling_mode" in config:
        modes = config["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:
        modes = [key for key in config if key.startswith("pooling_mode_") and config[key]]
        modes = [_ST_LEGACY_KEYS.get(key, key.removeprefix("pooling_mode_")) for key in modes] or ["mean"]
    if len(modes) != 1:
        raise ValueError(
            f"sentence-transformers pooling {modes} combines modes; densetune pools with one mode"
        )
    return resolve_pooling(modes[0])
