"""densetune: fine-tune and evaluate retrieval models (bi-encoders, rerankers, LLM embedders)."""

__version__ = "0.1.0"
