"""What one training batch means for each kind of model: forward, loss, dev scores and throughput counts.

The recipe (:mod:`densetune.train.loop`) runs one loop for every model. What differs between a bi-encoder
(embeddings scored by a contrastive + distillation objective, optionally through the gradient cache) and a
cross-encoder reranker (one score per (query, passage) row, :class:`~densetune.losses.RerankerLoss`)
lives here, behind one small interface:

    step = build_step(cfg, raw_model, autocast)
    loss = step.backward(model, batch, scale)      # forward + loss + (loss * scale).backward(); detached loss
    scores = step.group_scores(model, batch)       # [B, n] float32, each query's positive in column 0
    samples, tokens = step.count(batch)            # queries and real (non-padding) tokens of a batch
    loss = step.probe(model)                        # a scalar reaching every parameter a batch can reach

Both kinds take the same groups (1 positive + n-1 negatives) from the same selector and sampler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from densetune.config import instantiate
from densetune.data.batch import Batch, PairBatch

Autocast = Callable[[], contextlib.AbstractContextManager]


class EmbeddingStep:
    """Bi-encoders and LLM embedders: ``model(batch) -> (q [B, H], p [B*n, H])`` and the retrieval objective.

    Args:
        objective: a :class:`~densetune.losses.RetrievalObjective` (contrastive + distillation).
        autocast: returns the mixed-precision context of a forward.
        grad_cache_chunk_size: encode in chunks of this many texts through the gradient cache, or None.
    """

    kind = "bi-encoder"

    def __init__(self, objective: nn.Module, autocast: Autocast, grad_cache_chunk_size: int | None = None):
        self.objective = objective
        self.autocast = autocast
        self.chunk = grad_cache_chunk_size
        # a MatryoshkaLoss wraps the objective (as ``base``)
        contrastive = getattr(getattr(objective, "base", objective), "contrastive", None)
        # the dev loss is the contrastive loss's softmax over each group, at the training temperature
        self.dev_temperature = float(getattr(contrastive, "temperature", 1.0))

    def backward(self, model: nn.Module, batch: Batch, scale: float) -> torch.Tensor:
        """Forward, loss and backward of one micro-batch; returns the unscaled loss (detached).

        With the gradient cache the batch is encoded in chunks and the cache runs the backward itself.
        """
        from densetune.losses import loss_inputs

        if self.chunk:
            from densetune.train.gradcache import grad_cache_step

            with self.autocast():
                loss = grad_cache_step(model, self.objective, batch, chunk_size=self.chunk, scale=scale)
            return loss.detach()
        with self.autocast():
            q, p = model(batch)
        loss = self.objective(q, p, **loss_inputs(batch))
        (loss * scale).backward()
        return loss.detach()

    def group_scores(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        with self.autocast():
            q, p = model(batch)
        q, p = q.float(), p.float()
        n = p.shape[0] // q.shape[0]
        return torch.einsum("bh,bnh->bn", q, p.view(q.shape[0], n, -1))

    @staticmethod
    def count(batch: Batch) -> tuple[int, int]:
        samples = int(batch.q_input_ids.shape[0])  # type: ignore[union-attr]
        return samples, int(batch.q_attention_mask.sum()) + int(batch.d_attention_mask.sum())  # type: ignore[union-attr]

    @staticmethod
    def probe(model: nn.Module, tokenizer: Any) -> torch.Tensor:
        device = next(model.parameters()).device
        enc = tokenizer(["probe"], return_tensors="pt")
        batch = Batch.from_mapping({f"{side}_{k}": v for side in ("q", "d") for k, v in enc.items()})
        q, p = model(batch.to(device))
        return q.float().sum() + p.float().sum()

    def card(self, cfg: Any) -> dict[str, Any]:
        """The loss settings written into the model card."""
        lcfg = cfg.loss
        return {
            "contrastive": lcfg.contrastive,
            "contrastive_weight": lcfg.contrastive_weight,
            "distillation": lcfg.distillation,
            "distillation_weight": lcfg.distillation_weight,
            **({"task_weights": lcfg.task_weights} if lcfg.task_weights else {}),
            **({"use_train_config": lcfg.use_train_config} if lcfg.use_train_config else {}),
            **(
                {"matryoshka_dims": lcfg.matryoshka_dims, "matryoshka_weights": self.objective.weights}
                if lcfg.matryoshka_dims
                else {}
            ),
        }


class RerankerStep:
    """Cross-encoders: ``model(batch) -> scores [B*n]`` (positive first per query) and the reranker loss.

    Args:
        loss_fn: a :class:`~densetune.losses.RerankerLoss` (listwise CE, BCE, distillation).
        autocast: returns the mixed-precision context of a forward.
    """

    kind = "cross-encoder"

    def __init__(self, loss_fn: nn.Module, autocast: Autocast):
        self.loss_fn = loss_fn
        self.autocast = autocast
        self.dev_temperature = float(getattr(loss_fn, "temperature", 1.0))

    def backward(self, model: nn.Module, batch: PairBatch, scale: float) -> torch.Tensor:
        from densetune.losses import loss_step

        with self.autocast():
            loss = loss_step(model, batch, self.loss_fn)
        (loss * scale).backward()
        return loss.detach()

    def group_scores(self, model: nn.Module, batch: PairBatch) -> torch.Tensor:
        from densetune.losses import rows_per_query

        with self.autocast():
            scores = model(batch)
        return scores.float().view(-1, rows_per_query(batch))

    @staticmethod
    def count(batch: PairBatch) -> tuple[int, int]:
        from densetune.losses import rows_per_query

        rows = int(batch.input_ids.shape[0])
        return rows // rows_per_query(batch), int(batch.attention_mask.sum())

    @staticmethod
    def probe(model: nn.Module, tokenizer: Any) -> torch.Tensor:
        device = next(model.parameters()).device
        batch = PairBatch.from_mapping(model.tokenize_pairs(["probe"], ["probe"]))
        return model(batch.to(device)).float().sum()

    def card(self, cfg: Any) -> dict[str, Any]:
        return {"reranker": self.loss_fn.get_config_dict()}


def is_reranker(model: nn.Module) -> bool:
    """True for a :class:`~densetune.models.crossencoder.CrossEncoder` (what ``model._target_`` loaded)."""
    from densetune.models.crossencoder import CrossEncoder

    return isinstance(model, CrossEncoder)


def build_step(cfg: Any, model: nn.Module, autocast: Autocast) -> EmbeddingStep | RerankerStep:
    """The step for the loaded model, with its loss built from the config's nodes.

    A bi-encoder takes ``loss.contrastive`` + ``loss.distillation`` (a :class:`RetrievalObjective`), inside a
    :class:`MatryoshkaLoss` with ``loss.matryoshka_dims`` (checked here against the model's embedding
    dimension); a cross-encoder takes ``loss.reranker`` (the config checked that no option of the other kind
    is set).
    """
    lcfg = cfg.loss
    if is_reranker(model):
        return RerankerStep(instantiate(lcfg.reranker, "loss.reranker"), autocast)

    from densetune.losses import MatryoshkaLoss, RetrievalObjective

    objective: nn.Module = RetrievalObjective(
        instantiate(lcfg.contrastive, "loss.contrastive") if lcfg.contrastive else None,
        instantiate(lcfg.distillation, "loss.distillation") if lcfg.distillation else None,
        contrastive_weight=lcfg.contrastive_weight,
        distill_weight=lcfg.distillation_weight,
        task_weights=lcfg.task_weights or None,
        use_train_config=lcfg.use_train_config,
    )
    if lcfg.matryoshka_dims:
        objective = MatryoshkaLoss(
            objective,
            lcfg.matryoshka_dims,
            lcfg.matryoshka_weights or None,
            normalize=bool(getattr(getattr(model, "config", None), "normalize", False)),
            embedding_dim=getattr(model, "embedding_dim", None),
        )
    return EmbeddingStep(objective, autocast, cfg.train.grad_cache_chunk_size)


def group_metrics(scores: list[torch.Tensor], temperature: float) -> dict[str, float]:
    """Dev metrics over groups [B, n] with the positive in column 0: mean cross-entropy, acc@1 and MRR.

    Ties count in the positive's favour (its rank is the number of documents scoring strictly above it).
    """
    all_scores = torch.cat(scores)
    target = torch.zeros(all_scores.shape[0], dtype=torch.long, device=all_scores.device)
    loss = nn.functional.cross_entropy(all_scores / temperature, target)
    rank = (all_scores > all_scores[:, :1]).sum(dim=1)
    return {
        "dev_loss": loss.item(),
        "dev_acc@1": (rank == 0).float().mean().item(),
        "dev_mrr": (1.0 / (rank.float() + 1.0)).mean().item(),
    }
