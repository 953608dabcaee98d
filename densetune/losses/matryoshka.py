"""MatryoshkaLoss: any embedding loss, summed over embeddings cut to each of several dimensions.

``loss = sum_k weight_k * base(truncate(q, d_k), truncate(p, d_k), **inputs)`` (Kusupati et al., 2022,
"Matryoshka Representation Learning"; sentence-transformers' ``MatryoshkaLoss`` is the same sum), with each
cut L2-normalised again when the model normalises (:func:`densetune.models.matryoshka.truncate`).

It wraps the whole objective (contrastive, distillation, per-task settings), and takes the same inputs, so
every path that calls an embedding loss gets it unchanged: the plain step, the gradient cache (whose loss
runs on the cached embeddings: the cut is part of that loss, and its gradient flows back to them) and
cross-device negatives (the base loss gathers the cut passages of every rank, once per dimension; the
traffic is ``sum(dims) / H`` times the plain loss's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from densetune.models.matryoshka import check_dims, truncate


class MatryoshkaLoss(nn.Module):
    """The weighted sum of ``base`` over embeddings truncated to each of ``dims``.

    Args:
        base: an embedding loss ``base(q [B, H], p [B*n, H], *, n_passages, ...)`` (ContrastiveLoss,
            RetrievalObjective).
        dims: dimensions to train, e.g. ``[384, 256, 128, 64]`` (distinct positive integers; sorted largest
            first here). The full dimension may be one of them; without it the full embedding is not trained
            on its own.
        weights: one weight >= 0 per dim (in the order given); None: 1.0 each.
        normalize: L2-normalise each cut (set it when the model normalises its embeddings, as densetune's
            bi-encoders do by default); False keeps the raw prefix (dot-product models).
        embedding_dim: the model's embedding dimension, to check ``dims`` against.

    Inputs: those of ``base`` (``loss_inputs(batch)``); returns a scalar.

    Raises:
        ConfigError: invalid dims or weights (the key named is ``loss.matryoshka_dims`` / ``_weights``).

    Example:
        >>> loss_fn = MatryoshkaLoss(ContrastiveLoss(0.05), [384, 256, 128, 64])
        >>> loss = loss_fn(*model(batch), **loss_inputs(batch))
    """

    def __init__(
        self,
        base: nn.Module,
        dims: Sequence[int],
        weights: Sequence[float] | None = None,
        *,
        normalize: bool = True,
        embedding_dim: int | None = None,
    ):
        super().__init__()
        self.dims, self.weights = check_dims(dims, weights, embedding_dim=embedding_dim)
        self.base = base
        self.normalize = bool(normalize)

    def get_config_dict(self) -> dict[str, Any]:
        return {"matryoshka_dims": self.dims, "matryoshka_weights": self.weights, "normalize": self.normalize}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.get_config_dict().items())

    def forward(self, q: Tensor, p: Tensor, *, n_passages: int, **inputs: Any) -> Tensor:
        terms = [
            weight
            * self.base(
                truncate(q, dim, self.normalize),
                truncate(p, dim, self.normalize),
                n_passages=n_passages,
                **inputs,
            )
            for dim, weight in zip(self.dims, self.weights)
            if weight > 0
        ]
        return torch.stack(terms).sum()
