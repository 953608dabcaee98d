"""AdamW with decay-free biases and norm weights, and the warm-up + linear/cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from densetune.train.schema import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed and a decay-free group.

    Biases, normalisation weights (LayerNorm, RMSNorm: any 1-d parameter, or a name containing "norm")
    and other 1-d parameters get no weight decay: decaying them pulls scales and offsets towards zero,
    which only hurts. Frozen parameters (LoRA's base weights) are left out.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; fused kernel unless ``cfg.fused`` says otherwise.

    By default fused on CUDA, and on the CPU for plain tensors (one kernel per parameter instead of a dozen
    element-wise ops; torch's own default there is the slowest, per-tensor loop); FSDP's sharded DTensor
    parameters on a CPU keep torch's default.

    Raises:
        ValueError: the model has no trainable parameters.
    """
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    fused = cfg.fused
    if fused is None:
        plain = all(type(p) is nn.Parameter for g in groups for p in g["params"])
        fused = device.type == "cuda" or (device.type == "cpu" and plain)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    """Warm-up length: ``cfg.warmup_steps`` if set, else ``ceil(warmup_ratio x total_steps)``."""
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    return math.ceil(cfg.warmup_ratio * total_steps)


def lr_factor(step: int, *, total_steps: int, warmup: int, kind: str, min_ratio: float) -> float:
    """Multiplier of the peak lr used for optimizer step ``step + 1`` (LambdaLR convention: step from 0).

    Linear warm-up from ``1/(warmup+1)`` to 1 (never exactly 0, so the first step learns), then
    ``constant`` 1, ``linear`` decay to ``min_ratio`` at ``total_steps``, or ``cosine`` decay to ``min_ratio``.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if kind == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    if kind == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {kind!r}; expected constant, linear or cosine")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR following :func:`lr_factor`; its state (the step count) goes into checkpoints."""
    warmup = warmup_steps(cfg, total_steps)

    def factor(step: int) -> float:
        return lr_factor(
            step, total_steps=total_steps, warmup=warmup, kind=cfg.scheduler, min_ratio=cfg.min_lr_ratio
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
