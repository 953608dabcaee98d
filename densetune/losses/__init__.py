"""Retrieval losses: embeddings or reranker scores (plus document ids and teacher scores) in, one scalar out.

API:
    ContrastiveLoss(temperature=0.05, in_batch_negatives=True, mask_false_negatives=True,
                    margin_mask=None, cross_device=True)
        loss(q [B, H], p [B*n, H], *, n_passages, passage_doc_ids=None, positive_doc_ids=None,
             in_batch_negatives=None) -> scalar
    DistillationLoss(kind="kl", teacher_temperature=1.0, student_temperature=0.02)
        loss(student_scores [B, n], teacher_scores [B, n]) -> scalar
    RetrievalObjective(contrastive=None, distillation=None, contrastive_weight=1.0, distill_weight=1.0,
                       task_weights=None, use_train_config=False)
        loss(q, p, *, n_passages, passage_doc_ids=None, positive_doc_ids=None, teacher_scores=None, task=None,
             in_batch_negatives=None)
    MatryoshkaLoss(base, dims, weights=None, *, normalize=True, embedding_dim=None)
        loss(q, p, **inputs) = sum_k weight_k * base(q[:, :d_k], p[:, :d_k], **inputs), each cut renormalised
    loss_inputs(batch) -> dict        keyword arguments of the embedding losses, read from a collated batch
    train_config_loss(config)         LLM-Embedder's per-task loss settings (TASK_CONFIG[config]["training"])
    contrastive_loss_from_scores(scores, targets, exclude=None, temperature=1.0) -> [B] per-query losses
    false_negative_mask(column_ids, targets, positive_doc_ids=None) -> bool [B, C]
    RerankerLoss(listwise_weight=1.0, bce_weight=0.0, distillation=None, distill_weight=1.0, temperature=1.0,
        teacher_temperature=1.0, student_temperature=1.0)(scores [B*n], n_passages=n, teacher_scores=None,
        labels=None) -> scalar
    loss_step(model, batch, loss_cfg) -> scalar   cross-encoder forward + loss of one batch (no backward)
    rows_per_query(batch) -> n                    rows of each query's group in a reranker batch

Layout of a batch (the collators' contract): query i owns passages ``p[i*n : (i+1)*n]``, its positive
first, then n-1 hard negatives. ``passage_doc_ids`` [B*n] are int64 ids (``doc_id_to_int64``) aligned
with ``p``.

Every embedding loss (ContrastiveLoss, RetrievalObjective) takes the same keyword arguments, those built
by :func:`loss_inputs`, so the training loop and :func:`densetune.train.gradcache.grad_cache_step` call
any of them as ``loss_fn(q, p, **loss_inputs(batch))``. Scores are computed in float32 with autocast
off: a temperature of 0.02 multiplies similarities by 50, beyond what bfloat16 resolves.

Cross-device negatives: with ``cross_device=True`` the loss gathers the passages (and their ids) of every
rank with :func:`densetune.distributed.gather_with_grad` itself, so the model's forward stays
local. Each rank scores its own queries against all passages and returns
``world_size * sum(local losses) / global number of queries``; DDP's gradient average then equals the
gradient of the global-batch mean loss exactly (see densetune/distributed.py). The value is the
global loss only after averaging over ranks (``all_reduce_mean``).

Modules: :mod:`~densetune.losses.scoring` (score columns, reduction), :mod:`~densetune.losses.contrastive`,
:mod:`~densetune.losses.distill`, :mod:`~densetune.losses.objective`, :mod:`~densetune.losses.matryoshka`
(:class:`MatryoshkaLoss` wraps any embedding loss), :mod:`~densetune.losses.reranker`
(:class:`RerankerLoss` for cross-encoders). Saved configs name the classes here (``densetune.losses.X``).
"""

from densetune.losses.contrastive import (
    ContrastiveLoss,
    contrastive_loss_from_scores,
    false_negative_mask,
    loss_inputs,
)
from densetune.losses.distill import DISTILL_KINDS, DistillationLoss
from densetune.losses.matryoshka import MatryoshkaLoss
from densetune.losses.objective import TASK_LOSS_KEYS, RetrievalObjective, train_config_loss
from densetune.losses.reranker import RerankerLoss, loss_step, rows_per_query

__all__ = [
    "DISTILL_KINDS",
    "TASK_LOSS_KEYS",
    "ContrastiveLoss",
    "DistillationLoss",
    "MatryoshkaLoss",
    "RerankerLoss",
    "RetrievalObjective",
    "contrastive_loss_from_scores",
    "false_negative_mask",
    "loss_inputs",
    "loss_step",
    "rows_per_query",
    "train_config_loss",
]
