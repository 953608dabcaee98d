"""Peak training memory, estimated at start, and the check that refuses a run the device cannot hold.

A recipe too large for the machine otherwise runs for minutes and is then killed by the kernel (CPU) or
stops with an out-of-memory error, with nothing that says which setting to change. The estimate is the sum of
weights, gradients, AdamW's two moments, and the activations one micro-batch (or one gradient-cache chunk)
keeps for the backward pass, for the configured batch at the configured maximum lengths (an upper bound:
batches pad to their longest text). The activation term per layer and token is
``hidden x (24 + 4 x heads x seq / hidden)`` values, fitted to measured peaks of all-MiniLM-L6-v2 on CPU
(batch 8 and 32, 256-token passages: within 15 %); with gradient checkpointing only each layer's input is
kept, plus one layer's activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from densetune.errors import ConfigError

GIB = 1024**3
_RUNTIME_BYTES = GIB // 2  # the Python process itself: torch, transformers, tokenizer, data index


@dataclass
class MemoryEstimate:
    """Bytes per device of each part of a training step's peak."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    runtime: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.runtime

    def describe(self) -> str:
        parts = ("weights", "gradients", "optimizer", "activations", "runtime")
        return (
            f"{self.total / GIB:.1f} GiB ("
            + ", ".join(f"{p} {getattr(self, p) / GIB:.1f}" for p in parts)
            + ")"
        )


def _backbone_config(model: nn.Module) -> Any:
    return next(
        (m.config for m in model.modules() if hasattr(getattr(m, "config", None), "num_hidden_layers")), None
    )


def sequences(cfg: Any, model: nn.Module, group_size: int) -> list[tuple[int, int]]:
    """``(count, max tokens)`` of the sequences one query of a micro-batch brings: its query and documents
    (bi-encoders), or its (query, document) pairs (cross-encoders)."""
    collator = cfg.data.collator or {}
    mcfg = getattr(model, "config", None)
    if hasattr(mcfg, "max_length") and not hasattr(mcfg, "max_passage_len"):  # a cross-encoder
        return [(group_size, int(mcfg.max_length))]
    q = collator.get("q_max_len") or collator.get("query_max_len") or getattr(mcfg, "max_query_len", 512)
    p = collator.get("p_max_len") or collator.get("passage_max_len") or getattr(mcfg, "max_passage_len", 512)
    return [(1, int(q)), (group_size, int(p))]


def estimate_memory(
    model: nn.Module, cfg: Any, *, group_size: int, bf16: bool, world_size: int = 1
) -> MemoryEstimate:
    """The peak memory per device of one training step of ``model`` under the recipe ``cfg``."""
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    gradients = trainable * 4
    optimizer = trainable * 8  # AdamW: exp_avg and exp_avg_sq in float32
    if cfg.train.fsdp:  # parameters, gradients and moments sharded over the processes
        weights, gradients, optimizer = (x // max(world_size, 1) for x in (weights, gradients, optimizer))
    backbone = _backbone_config(model)
    activations = 0
    if backbone is not None:
        hidden = int(getattr(backbone, "hidden_size", 0) or 0)
        layers = int(getattr(backbone, "num_hidden_layers", 0) or 0)
        heads = int(getattr(backbone, "num_attention_heads", 1) or 1)
        value_bytes = 2 if bf16 else 4
        per_query = cfg.train.grad_cache_chunk_size or cfg.train.batch_size
        checkpointing = bool(getattr(cfg.model, "gradient_checkpointing", False))
        for count, seq in sequences(cfg, model, group_size):
            tokens = per_query * count * seq
            per_layer = tokens * hidden * (24 + 4 * heads * seq / max(hidden, 1)) * value_bytes
            if checkpointing:
                activations += int(tokens * hidden * value_bytes * layers + per_layer)
            else:
                activations += int(per_layer * layers)
    return MemoryEstimate(weights, gradients, optimizer, activations, _RUNTIME_BYTES)


def device_memory(device: torch.device) -> int | None:
    """Bytes the run may use: a GPU's total memory; on CPU the memory available plus what this process
    already holds (its model is part of the estimate). None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return _linux_available()


def _linux_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        with open("/proc/self/status", encoding="ascii") as f:
            rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):  # not Linux: the check is skipped
        return None
    return available + rss


def check_memory(estimate: MemoryEstimate, available: int | None, cfg: Any, global_batch: int) -> None:
    """Refuse a run whose estimated peak exceeds ``available``, naming the settings that lower it.

    Raises:
        ConfigError: on ``train.batch_size``, unless ``train.ignore_memory_check`` is true.
    """
    if available is None or estimate.total <= available or cfg.train.ignore_memory_check:
        return
    fixes = [f"a smaller train.batch_size (now {cfg.train.batch_size} per device; keep the global batch "
             f"{global_batch} with train.grad_accum_steps)"]  # fmt: skip
    if not cfg.train.grad_cache_chunk_size and not cfg.train.fsdp:
        fixes.append("the gradient cache, train.grad_cache_chunk_size=8 (the same loss in chunks)")
    if not cfg.model.gradient_checkpointing:
        fixes.append("model.gradient_checkpointing=true")
    if not cfg.model.lora:
        fixes.append("LoRA (model.lora: {r: 16, alpha: 32}) for a large backbone")
    raise ConfigError(
        "train.batch_size",
        f"estimated peak memory {estimate.describe()} exceeds the device's {available / GIB:.1f} GiB; lower it "
        f"with {'; '.join(fixes)}; or set train.ignore_memory_check=true to go on anyway",
    )
