"""One loader per model kind, for inference, and the one place that tells the kinds apart.

:func:`model_kind` says what a folder holds (a bi-encoder, or a cross-encoder: a sequence-classification
head or a densetune reranker folder; :func:`densetune.models.loading.reranker_backbone` then says whether
its backbone is an encoder or a decoder LLM). :func:`load_encoder` gives a
:class:`~densetune.models.biencoder.BiEncoder` and :func:`load_reranker` a
:class:`~densetune.models.crossencoder.CrossEncoder`, on a device, for the precision asked, with a load
failure as one line; the retrieval commands (encode, evaluate, mine, score, rerank) load through them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from densetune.errors import DataError, DensetuneError
from densetune.models import loading
from densetune.precision import set_inference_precision

BI_ENCODER, CROSS_ENCODER = "bi-encoder", "cross-encoder"


def check_model_path(model: str, option: str = "--model") -> str:
    """An existing model folder (absolute), or a hub id ``org/name`` left to the local cache; else a
    one-line error."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise DensetuneError(f"{option} {model}: expected a model folder, got a file")
    if re.fullmatch(r"[A-Za-z0-9_][\w.-]*/[\w.-]+", model):
        return model
    raise DensetuneError(f"{option} {model}: model not found; expected a model folder or a hub id (org/name)")


def model_kind(path: str | Path) -> str:
    """``bi-encoder`` or ``cross-encoder`` (a sequence-classification head, or a folder a densetune
    CrossEncoder saved) for a model folder.

    Raises:
        DataError: no ``config.json``.
    """
    from densetune.models.crossencoder import CONFIG_NAME

    path = Path(path)
    if not (path / "config.json").is_file():
        raise DataError("not a model folder; expected config.json", path)
    from transformers import AutoConfig

    if loading.is_sequence_classifier(AutoConfig.from_pretrained(path)) or (path / CONFIG_NAME).is_file():
        return CROSS_ENCODER
    return BI_ENCODER


def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_encoder(
    model: str | Path | Any,
    *,
    device: str | None = None,
    precision: str | None = None,
    dim: int | None = None,
) -> Any:
    """A model folder/name -> :class:`densetune.models.biencoder.BiEncoder` on ``device`` (default: cuda if
    available); an object with ``encode_texts`` is returned as it is. ``precision`` (``auto`` | ``bf16`` |
    ``fp32``): what its forwards run in (:func:`densetune.precision.set_inference_precision`; a model loaded
    here gets bf16 weights under bf16, an object passed in runs under autocast); None: as it is. ``dim``:
    embeddings cut to their first ``dim`` dimensions (a :class:`~densetune.models.matryoshka.TruncatedEncoder`,
    renormalised when the model normalises)."""
    encoder = _load_encoder(model, device=device, precision=precision)
    if dim is None:
        return encoder
    from densetune.models.matryoshka import TruncatedEncoder

    return TruncatedEncoder(encoder, dim)


def _load_encoder(model: str | Path | Any, *, device: str | None, precision: str | None) -> Any:
    if not isinstance(model, (str, Path)):
        if not hasattr(model, "encode_texts"):
            raise DensetuneError(
                f"{type(model).__name__} has no encode_texts(); expected a model path or a BiEncoder"
            )
        set_inference_precision(model, precision)
        return model
    from densetune.models.biencoder import BiEncoder

    path = check_model_path(str(model))  # a folder, or a hub id (from the local cache when offline)
    try:
        encoder = BiEncoder.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise DensetuneError(f"{path}: could not load the model: {err}") from None
    encoder = encoder.to(_device(device))
    set_inference_precision(encoder, precision, owned=True)
    return encoder


def load_reranker(
    model: str,
    *,
    max_length: int | None = None,
    dtype: str | None = None,
    device: str | None = None,
    precision: str | None = None,
):
    """A :class:`~densetune.models.crossencoder.CrossEncoder` in eval mode on ``device`` (default: cuda when
    available), for the score and rerank commands; a load failure becomes one line. ``precision``: what its
    forwards run in (:func:`densetune.precision.set_inference_precision`)."""
    from densetune.models.crossencoder import CrossEncoder

    try:
        reranker = CrossEncoder.from_pretrained(model, max_length=max_length, dtype=dtype)
    except (OSError, ValueError) as err:
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        raise DensetuneError(f"--model {model}: cannot load a reranker: {first}") from None
    reranker = reranker.to(_device(device)).eval()
    set_inference_precision(reranker, precision, owned=dtype is None)  # an explicit --dtype stays
    return reranker
