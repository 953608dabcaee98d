"""Devices and sharded models for the training recipe.

``pick_device`` chooses this rank's device (the process group is joined by
:func:`densetune.distributed.init_distributed`), ``apply_fsdp`` shards a model with FSDP2 (one unit per repeated
transformer block, then the root), and ``trainable_state`` / ``load_model_state`` copy weights out of and
into a model whether its parameters are plain tensors or FSDP2 shards (checkpoints hold full tensors, so
a checkpoint does not depend on how the run was sharded). ``gather_objects`` collects one picklable object
per rank (data positions and RNG states for checkpoints).
"""

from __future__ import annotations

import torch
from torch import nn

from densetune.errors import ConfigError


def pick_device(device: str, local_rank: int) -> torch.device:
    """``train.device`` resolved for this rank: ``cuda:<local rank>`` when asked for (or auto and visible)."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError(
                "train.device", "cuda was asked for but no GPU is visible; use train.device=cpu"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def trainable_state(model: nn.Module, names: set[str] | None) -> dict[str, torch.Tensor]:
    """Parameters by name (only ``names`` when given), full tensors on CPU; gathers FSDP2 shards."""
    out = {}
    for name, param in model.named_parameters():
        if names is not None and name not in names:
            continue
        t = param.detach()
        if hasattr(t, "full_tensor"):  # FSDP2 DTensor: every rank takes part in the gather
            t = t.full_tensor()
        out[name] = t.cpu()
    return out


def load_model_state(model: nn.Module, tensors: dict[str, torch.Tensor], fsdp: bool) -> None:
    """Copy checkpoint tensors into the model's parameters (sharding them again under FSDP2)."""
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ConfigError("resume", f"the checkpoint has weights this model lacks: {', '.join(unknown[:5])}")
    with torch.no_grad():
        for name, value in tensors.items():
            param = params[name]
            if fsdp and hasattr(param, "device_mesh"):
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements)
                param.copy_(value)
            else:
                param.copy_(value.to(param.device, param.dtype))


def apply_fsdp(model: nn.Module, bf16: bool) -> nn.Module:
    """FSDP2: shard each repeated transformer block, then the root (parameters, grads, optimizer state)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for block in repeated_blocks(model):
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """Children of the outermost ModuleLists of >1 same-typed modules: the transformer layers of any
    backbone (of each tower). Lists nested inside a chosen layer are skipped: FSDP2 wraps bottom-up
    units, and one unit per layer is the usual granularity."""
    blocks: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():  # pre-order: outer lists come before the lists inside their layers
        if id(module) in inside:
            continue
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            blocks.extend(module)
            inside.update(id(m) for block in module for m in block.modules())
    return blocks
