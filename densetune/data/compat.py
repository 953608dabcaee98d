"""Old import path of the seeds' data names: a re-export of :mod:`densetune.compat`, kept so saved configs load.

Configs and scripts written before the names moved to ``densetune.compat`` say
``densetune.data.compat.make_retrieval_dataset`` or ``densetune.data.compat.SameDatasetTrainDataset``
(LLM-Embedder's); both still resolve to the same objects. New code imports from ``densetune.compat.<system>``.
"""

from __future__ import annotations

from densetune.compat.llm_embedder import (
    TASK_CONFIG,
    RetrievalDataset,
    SameDatasetTrainDataset,
    get_query_prompt,
)
from densetune.compat.nemo_automodel import RetrievalTransform, make_retrieval_dataset

__all__ = [
    "TASK_CONFIG",
    "RetrievalTransform",
    "RetrievalDataset",
    "SameDatasetTrainDataset",
    "get_query_prompt",
    "make_retrieval_dataset",
]
