"""Classic NeMo (seed 003: SBERT and GPT embedding models), mapped onto densetune.

Classic NeMo is driven by scripts and Hydra keys rather than a Python API, so this module maps those onto
densetune's names and gathers the pieces its workflows need:

- Training data: SBERT's JSON list ``[{query, pos_doc, neg_doc: [...]}]`` and GPT embedding's JSONL
  ``{query, pos_doc, neg_doc, query_id, doc_id}`` are read by content (formats ``sbert`` / ``gpt-embedding``).
- ``model.data.hard_negatives_to_train`` (SBERT) and ``num_hard_negatives``: accepted in a recipe's
  ``data.selector`` as ``n_passages = k + 1`` (:data:`NEGATIVE_ALIASES`).
- SBERT's scoring (each query against every positive of the batch plus its own hard negatives):
  :func:`sbert_contrastive_loss`, i.e. ``ContrastiveLoss(in_batch_scope="positives")``.
- Inference and evaluation: ``densetune encode`` reads ``test_queries.jsonl`` (``query``, ``query_id``) and
  ``test_docs.jsonl`` (``pos_doc``, ``doc_id``) and writes NeMo's ``query.npy`` / ``query.ids`` and
  ``doc.npy`` / ``doc.ids``; ``densetune evaluate --qrels test_queries.jsonl`` takes the query file's
  ``doc_id`` labels as qrels (:func:`load_qrels`, :func:`read_query_file_qrels`).
"""

from __future__ import annotations

from typing import Any

from densetune.data.qrels import load_qrels, read_query_file_qrels
from densetune.losses.contrastive import ContrastiveLoss
from densetune.train.config import NEGATIVE_ALIASES

__all__ = ["NEGATIVE_ALIASES", "load_qrels", "read_query_file_qrels", "sbert_contrastive_loss"]


def sbert_contrastive_loss(temperature: float = 0.02, **kwargs: Any) -> ContrastiveLoss:
    """Classic NeMo SBERT's loss: InfoNCE over all in-batch positives plus the query's own hard negatives.

    ``kwargs`` go to :class:`~densetune.losses.ContrastiveLoss` (``cross_device``, ``mask_false_negatives``,
    ...). In a recipe: ``loss.contrastive.in_batch_scope: positives`` (configs/nemo_style.yaml).
    """
    return ContrastiveLoss(temperature=temperature, in_batch_scope="positives", **kwargs)
