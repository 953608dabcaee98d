"""The upstream systems' public names, one module per system, each name under its upstream spelling.

- :mod:`densetune.compat.nemo_automodel`: NeMo Automodel (``make_retrieval_dataset``, the collators and
  their helpers).
- :mod:`densetune.compat.llm_embedder`: FlagEmbedding LLM-Embedder (``RetrievalDataset``,
  ``SameDatasetTrainDataset``, ``RetrievalDataCollator``, ``TASK_CONFIG``).
- :mod:`densetune.compat.bge_icl`: FlagEmbedding BGE-EN-ICL (``DataArguments``, ``SameDatasetTrainDataset``,
  ``SameEmbedCollator``, ``get_query_prompt``).
- :mod:`densetune.compat.nemo`: classic NeMo (SBERT / GPT embedding: query files as qrels, the SBERT loss,
  the config names).

Two systems' same-named classes (``SameDatasetTrainDataset``) live in different modules, so they never clash.
These modules are adapters over the core (``densetune.data``, ``densetune.losses``, ...); the core never
imports them (tests/test_layering.py checks). docs/compat.md maps every name and lists what differs and why.
"""
