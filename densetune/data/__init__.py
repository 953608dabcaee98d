"""Data layer: read + validate files, select groups, apply prompts, batch, collate.

The seeds' public names are importable from here, so a NeMo Automodel or FlagEmbedding user changes only the
import (``from densetune.data import make_retrieval_dataset, RetrievalBiencoderCollator``) and YAML targets
read ``densetune.data.RetrievalBiencoderCollator``. ``SameDatasetTrainDataset`` here is LLM-Embedder's (as it
always was); BGE-EN-ICL's is ``densetune.compat.bge_icl.SameDatasetTrainDataset``. The names are defined in
:mod:`densetune.compat` (one module per upstream system) and the core modules. They load on first use: ``import densetune.data`` stays
cheap (no torch, transformers or datasets until a name is touched). This table is the one place the data layer
names the seed-API modules: a facade for the seeds' users that no core module goes through.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that defines it
_EXPORTS = {
    "make_retrieval_dataset": "densetune.compat.nemo_automodel",
    "RetrievalDataset": "densetune.compat.llm_embedder",
    "SameDatasetTrainDataset": "densetune.compat.llm_embedder",
    "TASK_CONFIG": "densetune.data.tasks",
    "get_query_prompt": "densetune.data.prompts",
    "BiEncoderCollator": "densetune.data.collators",
    "RetrievalBiencoderCollator": "densetune.data.collators",
    "CrossEncoderCollator": "densetune.data.collators",
    "RetrievalDataCollator": "densetune.data.flag_collators",
    "SameEmbedCollator": "densetune.data.flag_collators",
    "RetrievalTrainDataset": "densetune.data.dataset",
}

__all__ = [
    "TASK_CONFIG",
    "BiEncoderCollator",
    "CrossEncoderCollator",
    "RetrievalBiencoderCollator",
    "RetrievalDataCollator",
    "RetrievalDataset",
    "RetrievalTrainDataset",
    "SameDatasetTrainDataset",
    "SameEmbedCollator",
    "get_query_prompt",
    "make_retrieval_dataset",
]

if TYPE_CHECKING:
    from densetune.data.collators import BiEncoderCollator, CrossEncoderCollator, RetrievalBiencoderCollator
    from densetune.data.dataset import RetrievalTrainDataset
    from densetune.data.flag_collators import RetrievalDataCollator, SameEmbedCollator
    from densetune.data.prompts import get_query_prompt
    from densetune.data.tasks import TASK_CONFIG


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'densetune.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
