"""Tiny random models for the tests: 2-layer, hidden-32 BERT and Llama, seeded (the same weights every time).

Imported as ``tiny_models``: pytest puts tests/ on sys.path for tests/conftest.py (the default ``prepend``
import mode, no ``__init__.py``), as it puts tests/train there for ``train_helpers``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# What every tiny model shares: 2 layers, hidden 32, MLP 64.
SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
BERT_HEADS = ("pooler", "none", "classifier")


def tiny_bert(
    vocab_size: int,
    *,
    heads: int = 2,
    max_positions: int = 128,
    dropout: float = 0.1,
    num_labels: int | None = None,
    head: str = "pooler",
    seed: int = 0,
) -> Any:
    """A random BERT built right after ``torch.manual_seed(seed)``.

    Args:
        vocab_size: rows of the embedding (a tokenizer's ``vocab_size``, or a small number for id-only tests).
        heads: attention heads.
        max_positions: ``max_position_embeddings``.
        dropout: hidden and attention dropout (0.1 is BERT's default).
        num_labels: set in the config when given (the config's default otherwise).
        head: ``"pooler"`` a ``BertModel``, ``"none"`` a ``BertModel`` without its pooling layer,
            ``"classifier"`` a ``BertForSequenceClassification``.
        seed: the torch seed the weights are drawn with.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    if head not in BERT_HEADS:
        raise ValueError(f"head must be one of {BERT_HEADS}, got {head!r}")
    labels = {} if num_labels is None else {"num_labels": num_labels}
    config = BertConfig(
        vocab_size=vocab_size,
        num_attention_heads=heads,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        **SIZES,
        **labels,
    )
    torch.manual_seed(seed)
    if head == "classifier":
        return BertForSequenceClassification(config)
    return BertModel(config, add_pooling_layer=head == "pooler")


def tiny_biencoder(*, dropout: float, seed: int = 0, vocab_size: int = 50) -> Any:
    """A mean-pooled BiEncoder over :func:`tiny_bert` (4 heads, 32 positions), without a tokenizer."""
    from densetune.models.biencoder import BiEncoder, BiEncoderConfig

    bert = tiny_bert(vocab_size, heads=4, max_positions=32, dropout=dropout, seed=seed)
    return BiEncoder(bert, tokenizer=None, config=BiEncoderConfig(pooling="mean"))


def save_tiny_bert(out: Path, tokenizer_dir: str, **options: Any) -> str:
    """:func:`tiny_bert` sized to the tokenizer in ``tokenizer_dir``, saved with it in ``out``.

    ``options`` are :func:`tiny_bert`'s keyword arguments. Returns ``str(out)``.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return _save(tiny_bert(tokenizer.vocab_size, **options), tokenizer, out)


def save_tiny_llama(
    out: Path,
    tokenizer_dir: str,
    *,
    max_positions: int = 128,
    causal_lm: bool = False,
    pad_token: bool = True,
    tie_word_embeddings: bool = False,
    seed: int = 0,
) -> str:
    """A random Llama (4 heads, 2 KV heads) with the tokenizer in ``tokenizer_dir``, saved in ``out``.

    Args:
        max_positions: ``max_position_embeddings``.
        causal_lm: a ``LlamaForCausalLM`` (LM head) rather than a ``LlamaModel``.
        pad_token: put the tokenizer's pad token id in the config.
        tie_word_embeddings: tie the LM head to the input embedding.
        seed: the torch seed the weights are drawn with.

    Returns ``str(out)``.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if pad_token else None,
        tie_word_embeddings=tie_word_embeddings,
        **SIZES,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config) if causal_lm else LlamaModel(config)
    return _save(model, tokenizer, out)


def _save(model: Any, tokenizer: Any, out: Path) -> str:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
