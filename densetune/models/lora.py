"""LoRA for bi-encoder backbones through ``peft``: build the adapter, and merge it for export.

API:
    lora_config(spec, model, *, trainable_token_ids=None) -> peft.LoraConfig
    apply_lora(model, spec, *, trainable_token_ids=None) -> peft.PeftModel
    is_peft_model(model) -> bool
    unwrap_peft(model) -> nn.Module                 the transformers model inside a peft wrapper
    merged_state_dict(model) -> dict[str, Tensor]   plain-transformers state dict with adapters folded in

``spec`` keys (aliases in brackets): ``r`` [rank] = 16, ``alpha`` [lora_alpha] = 32, ``dropout``
[lora_dropout] = 0.1, ``target_modules`` = "all-linear", plus ``bias``, ``use_rslora``, ``use_dora``,
``modules_to_save``, ``layers_to_transform`` passed to peft unchanged.

``target_modules="all-linear"`` resolves to every ``nn.Linear`` of the backbone except those under a
``pooler`` (BERT's pooler is unused by embedding pooling, and LoRA weights that get no gradient make DDP
fail). Tokens added to the vocabulary (``<instruct>``, ``<query>``, ``<response>``) are trained through
peft's ``trainable_token_indices``: only their embedding rows get a gradient.

Merging for export does not touch the training model: ``merged_state_dict`` adds each adapter's delta
(peft's own ``get_delta_weight``) to a copy of the base weight, one layer at a time, so saving a
checkpoint mid-training costs no second copy of the model and no merge/unmerge rounding drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

LORA_DEFAULTS: dict[str, Any] = {"r": 16, "alpha": 32, "dropout": 0.1, "target_modules": "all-linear"}
_ALIASES = {"rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}
_PASSTHROUGH = ("bias", "use_rslora", "use_dora", "modules_to_save", "layers_to_transform")


def _linear_module_names(model: nn.Module) -> list[str]:
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and "pooler" not in name.split(".")
        and name.split(".")[-1] not in {"lm_head", "score"}
    ]


def lora_config(spec: Mapping[str, Any], model: nn.Module, *, trainable_token_ids: list[int] | None = None):
    """A ``peft.LoraConfig`` from a plain dict (see the module docstring for keys and defaults).

    Raises:
        ValueError: for unknown keys or out-of-range values, naming the valid keys.
    """
    from peft import LoraConfig

    settings = dict(LORA_DEFAULTS)
    for key, value in spec.items():
        key = _ALIASES.get(key, key)
        if key not in LORA_DEFAULTS and key not in _PASSTHROUGH:
            valid = sorted([*LORA_DEFAULTS, *_ALIASES, *_PASSTHROUGH])
            raise ValueError(f"lora: unknown key {key!r}; valid keys: {', '.join(valid)}")
        settings[key] = value
    if not int(settings["r"]) >= 1:
        raise ValueError(f"lora: r must be >= 1, got {settings['r']}")
    if not 0 <= float(settings["dropout"]) < 1:
        raise ValueError(f"lora: dropout must be in [0, 1), got {settings['dropout']}")
    targets = settings.pop("target_modules")
    if targets == "all-linear":
        targets = _linear_module_names(model)
        if not targets:
            raise ValueError(
                "lora: the backbone has no nn.Linear layers to adapt; give target_modules explicitly"
            )
    extra = {k: settings[k] for k in _PASSTHROUGH if k in settings}
    if trainable_token_ids:
        extra["trainable_token_indices"] = list(trainable_token_ids)
    return LoraConfig(
        r=int(settings["r"]),
        lora_alpha=float(settings["alpha"]),
        lora_dropout=float(settings["dropout"]),
        target_modules=targets,
        **extra,
    )


def apply_lora(model: nn.Module, spec: Mapping[str, Any], *, trainable_token_ids: list[int] | None = None):
    """Wrap ``model`` in a ``peft.PeftModel`` with LoRA adapters; the base weights are frozen."""
    import warnings

    from peft import get_peft_model

    config = lora_config(spec, model, trainable_token_ids=trainable_token_ids)
    with warnings.catch_warnings():
        # peft reads a transformers attribute deprecated in v5; nothing for our users to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def is_peft_model(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but keep plain models usable without it
        return False
    return isinstance(model, PeftModel)


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper; a plain model as it is."""
    return model.get_base_model() if is_peft_model(model) else model


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """State dict of the base model with every active adapter folded in, keyed as plain transformers.

    Walks the module tree and writes, for each peft wrapper, what the unwrapped module would hold: LoRA
    layers ``W + scale * B @ A`` (peft's ``get_delta_weight``), trainable token rows merged into the
    embedding, ``modules_to_save`` copies in place of the originals. A plain model returns its state dict.
    """
    if not is_peft_model(model):
        return dict(model.state_dict())
    state: dict[str, Tensor] = {}
    with torch.no_grad():
        _export(model.get_base_model(), "", state)
    return state


def _export(module: nn.Module, prefix: str, state: dict[str, Tensor]) -> None:
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper, TrainableTokensWrapper

    if isinstance(module, TrainableTokensWrapper):
        adapter = module.token_adapter
        _export(adapter.get_base_layer(), prefix, state)
        state[f"{prefix}weight"] = adapter.get_merged_weights(adapter.active_adapters).detach()
        return
    if isinstance(module, ModulesToSaveWrapper):
        active = [a for a in module.active_adapters if a in module.modules_to_save]
        _export(module.modules_to_save[active[0]] if active else module.original_module, prefix, state)
        return
    if isinstance(module, LoraLayer):
        base = module.get_base_layer()
        _export(base, prefix, state)
        if not module.merged:
            weight = state[f"{prefix}weight"]
            for adapter in module.active_adapters:
                if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            state[f"{prefix}weight"] = weight
        return
    for name, param in module.named_parameters(recurse=False):
        state[prefix + name] = param.detach()
    for name, buffer in module.named_buffers(recurse=False):
        if buffer is not None and name not in module._non_persistent_buffers_set:
            state[prefix + name] = buffer
    for name, child in module.named_children():
        _export(child, f"{prefix}{name}.", state)
