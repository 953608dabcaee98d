"""Old import path of LLM-Embedder's data names: a re-export of :mod:`densetune.compat.llm_embedder`.

Kept so saved configs and scripts naming ``densetune.data.flag_compat.*`` still load.
"""

from __future__ import annotations

from densetune.compat.llm_embedder import (
    TASK_CONFIG,
    RetrievalDataset,
    SameDatasetTrainDataset,
    get_query_prompt,
)

__all__ = ["TASK_CONFIG", "RetrievalDataset", "SameDatasetTrainDataset", "get_query_prompt"]
