"""Matryoshka embeddings (Kusupati et al., 2022): the first k dimensions of an embedding, used as an embedding.

API:
    truncate(embeddings, dim, normalize) -> the same type    first ``dim`` columns, L2-renormalised when
                                                             ``normalize`` (torch tensors keep their graph)
    check_dims(dims, weights=None, *, key, embedding_dim=None) -> (dims, weights)
                                                             validated, largest first (ConfigError naming key)
    parse_dims(text, option="--dim") -> list[int]            "384,256,128" -> [384, 256, 128]
    add_dim_argument(parser, several=False)                  every command's ``--dim``
    single_dim(text) -> int | None                           ``--dim`` of a command taking one dimension
    check_width(dims, encoder)                               each dim fits the encoder, before encoding
    TruncatedEncoder(encoder, dim)                           an encoder whose ``encode_texts`` truncates
    trained_dims(model) -> list[int]                         the dims a model (or saved folder) was trained at

This is the one place embeddings are cut: the training loss (:class:`densetune.losses.MatryoshkaLoss`), and
``encode`` / ``mine`` / ``evaluate`` / ``search --dim`` all call :func:`truncate` (search through its own
chunk-wise normalisation, so a memory-mapped corpus stays on disk). Normalising after the cut keeps cosine
models cosine: a unit vector's prefix is not a unit vector.

sentence-transformers' ``SentenceTransformer(path, truncate_dim=k)`` cuts after its ``Normalize`` module and does
not renormalise; its cosine similarity (``similarity_fn_name: cosine``, written by densetune's export) ranks
alike, and ``encode(..., normalize_embeddings=True)`` gives the same vectors as ``densetune encode --dim k``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from densetune.errors import ConfigError, DensetuneError

_EPS = 1e-12  # torch.nn.functional.normalize's floor on the norm, for numpy too


def truncate(embeddings: Any, dim: int | None, normalize: bool) -> Any:
    """The first ``dim`` columns of ``embeddings`` [..., H], L2-normalised again when ``normalize``.

    Args:
        embeddings: a torch tensor (gradients flow) or a numpy array.
        dim: columns to keep, 1 <= dim <= H; None or H keeps all and returns ``embeddings`` as they are.
        normalize: the rows are unit vectors (the model normalises its embeddings): a cut is divided by its
            norm again, so it is a unit vector too.

    Raises:
        DensetuneError: ``dim`` is not between 1 and H.
    """
    if dim is None:
        return embeddings
    width = int(embeddings.shape[-1])
    if not 1 <= dim <= width:
        raise DensetuneError(f"dimension {dim} is out of range: the embeddings have {width} dimensions")
    if dim == width:  # nothing cut: unit rows stay unit rows (and a loss on them keeps its exact gradient)
        return embeddings
    cut = embeddings[..., :dim]
    if not normalize:
        return cut
    if isinstance(cut, torch.Tensor):
        return F.normalize(cut, p=2, dim=-1, eps=_EPS)
    cut = np.asarray(cut, dtype=np.float32)
    return cut / np.maximum(np.linalg.norm(cut, axis=-1, keepdims=True), _EPS)


def check_dims(
    dims: Sequence[Any],
    weights: Sequence[Any] | None = None,
    *,
    key: str = "loss.matryoshka_dims",
    embedding_dim: int | None = None,
) -> tuple[list[int], list[float]]:
    """Validated Matryoshka dims and weights, sorted largest first (each weight stays with its dim).

    Args:
        dims: positive integers, distinct, each <= ``embedding_dim`` when it is given.
        weights: one number >= 0 per dim (not all 0); None or empty: 1.0 each (the paper's and
            sentence-transformers' default).
        key: the config key errors name (weights are ``key`` with ``_dims`` replaced by ``_weights``).
        embedding_dim: the model's embedding dimension, when known.

    Raises:
        ConfigError: one line naming ``key`` and what was expected.
    """
    wkey = key.replace("_dims", "_weights")
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence) or not dims:
        raise ConfigError(
            key, f"expected a non-empty list of positive integers, e.g. [384, 256, 128, 64]; got {dims!r}"
        )
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ConfigError(
                key, f"expected positive integers, e.g. [384, 256, 128, 64]; got {d!r} in {list(dims)}"
            )
    if len(set(dims)) != len(dims):
        raise ConfigError(key, f"expected distinct dimensions; got {list(dims)}")
    if embedding_dim is not None and max(dims) > embedding_dim:
        raise ConfigError(
            key,
            f"{max(dims)} exceeds the model's embedding dimension {embedding_dim}; expected dims <= {embedding_dim}",
        )
    if weights is None or len(weights) == 0:
        weights = [1.0] * len(dims)
    if len(weights) != len(dims):
        raise ConfigError(
            wkey, f"expected one weight per dimension ({len(dims)}); got {len(weights)}: {list(weights)}"
        )
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(wkey, f"expected finite numbers >= 0; got {w!r}")
    if not any(weights):
        raise ConfigError(wkey, "every weight is 0: nothing would be trained")
    pairs = sorted(zip(dims, weights), key=lambda pair: -pair[0])
    return [int(d) for d, _ in pairs], [float(w) for _, w in pairs]


def parse_dims(text: str | int | None, option: str = "--dim") -> list[int] | None:
    """``"384,256"`` -> ``[384, 256]`` (the order given, repeats dropped); None stays None.

    Raises:
        DensetuneError: a part that is not a positive integer, naming ``option``.
    """
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if not dims or any(d < 1 for d in dims):
        raise DensetuneError(
            f"{option} expects positive integers separated by commas (e.g. 256 or 384,128); got {text!r}"
        )
    return list(dict.fromkeys(dims))


def add_dim_argument(parser: Any, several: bool = False) -> None:
    """``--dim`` on a command's parser: keep the first k dimensions of every embedding (renormalised when the
    model normalises); ``several`` lets a comma-separated list ask for one result per dimension."""
    what = "K[,K...]" if several else "K"
    extra = "; several (e.g. 384,256,128,64) give one row each, from one encoding" if several else ""
    parser.add_argument(
        "--dim",
        metavar=what,
        default=None,
        help="truncate embeddings to their first K dimensions, L2-normalised again when the model normalises "
        f"(Matryoshka models; default: all){extra}",
    )


def single_dim(text: str | None, option: str = "--dim") -> int | None:
    """``--dim`` of a command that takes one dimension."""
    dims = parse_dims(text, option)
    if dims is not None and len(dims) > 1:
        raise DensetuneError(f"{option} takes one dimension here; got {text!r}")
    return dims[0] if dims else None


def check_width(dims: Sequence[int | None], encoder: Any, option: str = "--dim") -> None:
    """Before encoding: each of ``dims`` (None = all) fits the encoder's ``embedding_dim`` (when it has one).

    Raises:
        DensetuneError: a dim above the embedding dimension, naming ``option``.
    """
    width = getattr(encoder, "embedding_dim", None)
    for dim in dims:
        if dim is not None and isinstance(width, int) and not 1 <= dim <= width:
            raise DensetuneError(
                f"{option} {dim} is out of range: the model's embeddings have {width} dimensions"
            )


def trained_dims(model: Any) -> list[int]:
    """The Matryoshka dims a model was trained at (its ``config.matryoshka_dims``, or the folder's
    ``densetune_config.json``); [] when none are recorded."""
    if isinstance(model, (str, os.PathLike)):
        path = os.path.join(os.fspath(model), "densetune_config.json")
        if not os.path.isfile(path):
            return []
        with open(path, encoding="utf-8") as f:
            return [int(d) for d in json.load(f).get("matryoshka_dims") or []]
    return [int(d) for d in getattr(getattr(model, "config", None), "matryoshka_dims", None) or []]


class TruncatedEncoder:
    """An encoder (anything with ``encode_texts``) whose embeddings are cut to ``dim`` (:func:`truncate`).

    Every other attribute is the wrapped encoder's (its ``config``, ``parameters``, precision...), so the
    retrieval code treats it as the encoder itself; ``truncate_dim`` tells it the cut.
    """

    def __init__(self, encoder: Any, dim: int):
        check_width([dim], encoder)
        self.encoder = encoder
        self.truncate_dim = int(dim)
        self.normalize = bool(getattr(getattr(encoder, "config", None), "normalize", False))

    def __getattr__(self, name: str) -> Any:  # only called for names the wrapper does not have
        if name == "encoder":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.encoder, name)

    @property
    def embedding_dim(self) -> int:
        return self.truncate_dim

    def encode_texts(self, texts: Sequence[str], **kwargs: Any) -> Any:
        return truncate(self.encoder.encode_texts(texts, **kwargs), self.truncate_dim, self.normalize)
