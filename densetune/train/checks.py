"""What a recipe config must satisfy beyond its types, and the component calls it implies.

:func:`check_choices` and :func:`check_values` (ranges, required keys, option combinations, the loss options
of the model kind: :func:`trains_reranker`) run on every config :func:`densetune.train.config.from_dict`
returns; :func:`check_components` checks each component node against its target's signature as the recipe
will call it (``densetune train`` and validate run it before any model loads). :func:`model_loader_kwargs`
is what the recipe passes the model loader; :func:`training_prompt` is the run's one prompt, built from the
loaded model, and :func:`collator_prompt` what the collator is handed of it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

from densetune.config import TARGET, check_arguments, locate
from densetune.data.prompts import Prompt
from densetune.errors import ConfigError
from densetune.train.schema import LIVE_ARGS, SECTIONS, RecipeConfig


def check_choices(cfg: RecipeConfig) -> None:
    """Every field with a set of choices holds one of them."""
    for section in SECTIONS:
        values = getattr(cfg, section)
        for f in dataclasses.fields(values):
            choices, value = f.metadata.get("choices"), getattr(values, f.name)
            if choices and value not in choices:
                raise ConfigError(
                    f"{section}.{f.name}", f"expected one of {', '.join(map(str, choices))}; got {value!r}"
                )


def check_values(cfg: RecipeConfig) -> None:
    """Range checks and option combinations the types cannot express."""
    positive = {
        "train.batch_size": cfg.train.batch_size,
        "train.grad_accum_steps": cfg.train.grad_accum_steps,
        "train.epochs": cfg.train.epochs,
        "train.keep_last": cfg.train.keep_last,
        "train.log_every": cfg.train.log_every,
        "eval.batch_size": cfg.eval.batch_size,
        "eval.dev_n_passages": cfg.eval.dev_n_passages,
        "eval.rerank_top_k": cfg.eval.rerank_top_k,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(key, f"expected an integer >= 1; got {value}")
    for key, value in {
        "train.max_steps": cfg.train.max_steps,
        "train.grad_cache_chunk_size": cfg.train.grad_cache_chunk_size,
    }.items():
        if value is not None and value < 1:
            raise ConfigError(key, f"expected an integer >= 1 or null; got {value}")
    for key, value in {"train.save_every": cfg.train.save_every, "eval.every": cfg.eval.every}.items():
        if value < 0:
            raise ConfigError(key, f"expected an integer >= 0 (0 = only at the end); got {value}")
    if not (0 < cfg.optim.lr < math.inf):  # also false for NaN
        raise ConfigError("optim.lr", f"expected a positive, finite number; got {cfg.optim.lr}")
    for key in ("weight_decay", "eps", "max_grad_norm"):
        value = getattr(cfg.optim, key)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"optim.{key}", f"expected a finite number; got {value}")
    if not 0 <= cfg.optim.warmup_ratio < 1:
        raise ConfigError("optim.warmup_ratio", f"expected 0 <= ratio < 1; got {cfg.optim.warmup_ratio}")
    if not 0 <= cfg.optim.min_lr_ratio <= 1:
        raise ConfigError("optim.min_lr_ratio", f"expected 0 <= ratio <= 1; got {cfg.optim.min_lr_ratio}")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError("optim.betas", f"expected two numbers in [0, 1); got {cfg.optim.betas}")
    if not cfg.model.path:
        raise ConfigError(
            "model.path", "required: a model directory or name (e.g. model.path=/models/minilm)"
        )
    if not cfg.data.train:
        raise ConfigError("data.train", "required: a list of training files or directories")
    _check_loss_kind(cfg)
    if cfg.loss.matryoshka_dims or cfg.loss.matryoshka_weights:
        from densetune.models.matryoshka import check_dims

        # largest first, each weight with its dim (the model's width is checked once it is loaded)
        cfg.loss.matryoshka_dims, cfg.loss.matryoshka_weights = check_dims(
            cfg.loss.matryoshka_dims, cfg.loss.matryoshka_weights
        )
    from densetune.data.tasks import train_config_name

    try:
        train_config_name(cfg.loss.use_train_config)
    except ConfigError as err:
        raise ConfigError("loss.use_train_config", err.message) from None
    if cfg.eval.rerank_run is not None and not Path(cfg.eval.rerank_run).is_file():
        raise ConfigError(
            "eval.rerank_run", f"expected a TREC run file; {cfg.eval.rerank_run!r} is not a file"
        )
    if cfg.train.fsdp and cfg.train.grad_cache_chunk_size:
        raise ConfigError(
            "train.fsdp",
            "FSDP with the gradient cache is not supported; set train.grad_cache_chunk_size=null",
        )
    if cfg.resume is not None and cfg.resume != "auto" and not Path(cfg.resume).is_dir():
        raise ConfigError(
            "resume", f"expected null, auto or a checkpoint directory; {cfg.resume!r} is not a directory"
        )
    for key in LIVE_ARGS:
        if key == "model":
            continue
        node = _get(cfg, key)
        if node is not None and TARGET not in node:
            raise ConfigError(key, f"a component node needs {TARGET}: a dotted path to a class or function")
    collator = cfg.data.collator or {}
    if (
        str(collator.get(TARGET, "")).endswith("SameEmbedCollator")
        and collator.get("output", "seed") != "train"
    ):
        raise ConfigError(
            "data.collator.output",
            "SameEmbedCollator returns the FlagEmbedding dict unless output: train; densetune train reads "
            "q_input_ids / d_input_ids, so set data.collator.output=train",
        )


def trains_reranker(cfg: RecipeConfig) -> bool:
    """True when ``model._target_`` is a loader of a cross-encoder (a classmethod of a CrossEncoder class)."""
    from densetune.models.crossencoder import CrossEncoder

    owner = getattr(locate(cfg.model._target_, "model._target_"), "__self__", None)
    return isinstance(owner, type) and issubclass(owner, CrossEncoder)


def _check_loss_kind(cfg: RecipeConfig) -> None:
    """The loss options that apply to the model kind: embedding terms for bi-encoders, ``loss.reranker``
    for cross-encoders; options of the other kind are errors, not silently ignored."""
    lcfg, tcfg = cfg.loss, cfg.train
    if not trains_reranker(cfg):
        if lcfg.contrastive is None and lcfg.distillation is None:
            raise ConfigError(
                "loss", "both loss.contrastive and loss.distillation are null; enable at least one"
            )
        if cfg.data.collator is None:
            raise ConfigError(
                "data.collator", "a bi-encoder needs a collator node (null is for cross-encoders)"
            )
        if cfg.eval.rerank_run is not None:
            raise ConfigError(
                "eval.rerank_run", "reranks with a cross-encoder; a bi-encoder searches eval.beir_dir"
            )
        return
    if lcfg.matryoshka_dims or lcfg.matryoshka_weights:
        raise ConfigError(
            "loss.matryoshka_dims",
            "truncates embeddings; a cross-encoder scores pairs and has none: set loss.matryoshka_dims=[]",
        )
    if lcfg.distillation is not None:
        raise ConfigError(
            "loss.distillation",
            "applies to bi-encoders; a cross-encoder distils through loss.reranker.distillation "
            "(kl | margin_mse | stable_distill): set loss.distillation=null",
        )
    if lcfg.reranker is None:
        raise ConfigError("loss.reranker", "a cross-encoder needs a reranker loss node; got null")
    if tcfg.grad_cache_chunk_size:
        raise ConfigError(
            "train.grad_cache_chunk_size",
            "the gradient cache splits embedding batches; a cross-encoder scores each pair on its own, so "
            "use train.grad_accum_steps instead (set grad_cache_chunk_size=null)",
        )
    collator = cfg.data.collator
    if collator is not None and str(collator.get(TARGET, "")).endswith("BiEncoderCollator"):
        raise ConfigError(
            "data.collator",
            "a cross-encoder reads (query, passage) pairs: set data.collator=null (the model's own collator) "
            "or densetune.data.collators.CrossEncoderCollator",
        )
    if cfg.eval.beir_dir and cfg.eval.rerank_run is None:
        raise ConfigError(
            "eval.rerank_run",
            "a cross-encoder cannot search eval.beir_dir's whole corpus: give a first-stage TREC run to rerank "
            "(`densetune search ... --out RUN`, or `densetune evaluate --model M --data DIR --save-dir OUT` "
            "writes OUT/run.trec), or set eval.beir_dir=null",
        )


def _get(cfg: RecipeConfig, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def component_kwargs(node: dict[str, Any]) -> dict[str, Any]:
    """The plain settings of a component node (everything but ``_target_``)."""
    return {k: v for k, v in node.items() if k != TARGET}


def check_components(cfg: RecipeConfig) -> list[str]:
    """Check every component node against its target's signature, as the recipe will call it.

    Returns:
        One message per problem (empty when all is well): unknown targets, keyword arguments the target
        does not accept, and YAML keys that collide with arguments the recipe passes itself.
    """
    problems: list[str] = []
    nodes: dict[str, dict[str, Any] | None] = {
        "data.selector": cfg.data.selector,
        "data.sampler": cfg.data.sampler,
        "data.collator": cfg.data.collator,
        "loss.contrastive": cfg.loss.contrastive,
        "loss.distillation": cfg.loss.distillation,
        "loss.reranker": cfg.loss.reranker,
    }
    model_kwargs = {k: 0 for k in model_loader_kwargs(cfg)}
    nodes["model"] = {TARGET: cfg.model._target_, **model_kwargs}
    for key, node in nodes.items():
        if node is None:
            continue
        try:
            settings = component_kwargs(node)
            clash = sorted(set(settings) & set(LIVE_ARGS[key]))
            if clash:
                raise ConfigError(key, f"{', '.join(clash)} is set by the recipe; remove it from the config")
            target = locate(str(node[TARGET]), f"{key}.{TARGET}")
            check_arguments(target, {**settings, **dict.fromkeys(LIVE_ARGS[key])}, key)
        except ConfigError as err:
            problems.append(f"{err.key}: {err.message}")
    return problems


def model_loader_kwargs(cfg: RecipeConfig) -> dict[str, Any]:
    """Keyword arguments for the model loader: the model section plus the collator's prefixes and lengths
    (the longer of the collator's two lengths is the model's one inference limit for both)."""
    mcfg = cfg.model
    kwargs: dict[str, Any] = {
        "pooling": mcfg.pooling,
        "normalize": mcfg.normalize,
        "gguf_file": mcfg.gguf_file,
        "lora": mcfg.lora,
        "gradient_checkpointing": mcfg.gradient_checkpointing or None,
    }
    collator = cfg.data.collator or {}
    for key, arg in (
        ("query_prefix", "query_prefix"),
        ("passage_prefix", "passage_prefix"),
        ("q_max_len", "max_query_len"),
        ("p_max_len", "max_passage_len"),
        ("query_max_len", "max_query_len"),  # SameEmbedCollator's names
        ("passage_max_len", "max_passage_len"),
    ):
        if collator.get(key):
            kwargs[arg] = collator[key]
    lengths = [kwargs[k] for k in ("max_query_len", "max_passage_len") if k in kwargs]
    if lengths:
        # The collator truncates training texts itself; the model's limits are for encoding at evaluation
        # and after export, where queries and passages share one limit (sentence-transformers has one):
        # set both to the longer, so the numbers reported in training are the exported model's.
        kwargs["max_query_len"] = kwargs["max_passage_len"] = max(lengths)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.update(mcfg.kwargs)
    return kwargs


def training_prompt(model: Any, cfg: RecipeConfig, selector: Any) -> Prompt:
    """The run's one :class:`~densetune.data.prompts.Prompt`: the model's (its folder's prompts, or the
    collator's prefixes, which :func:`model_loader_kwargs` handed the loader) with the collator's
    ``use_dataset_instruction`` and the selector's task instruction set. The dataset applies its task layer,
    the collator its model layer and the saved model keeps its prefixes, so training, encoding and the
    exported model format a text alike.

    Raises:
        ConfigError: ``data.collator.use_dataset_instruction`` with a model that has prefixes: training would
            replace them, encoding and the exported model would apply them.
    """
    base = getattr(model, "prompt", None) or Prompt()  # a cross-encoder has no prefixes
    use_dataset = bool((cfg.data.collator or {}).get("use_dataset_instruction", False))
    prefixes = base.to_sentence_transformers()
    if use_dataset and any(prefixes.values()):
        raise ConfigError(
            "data.collator.use_dataset_instruction",
            f"dataset instructions replace the prefixes in training, but the model applies {prefixes} at "
            "encoding and after export; leave query_prefix / passage_prefix empty (and use a model folder "
            "without prompts) or turn dataset instructions off",
        )
    return dataclasses.replace(
        base, use_dataset_instruction=use_dataset, instruction=getattr(selector, "instruction", None)
    )


def collator_prompt(node: dict[str, Any], prompt: Prompt) -> dict[str, Prompt]:
    """``{"prompt": prompt}`` for a collator that takes one (it formats texts with it), ``{}`` for one that
    does not and has nothing to apply (the prompt has no prefixes: its task layer is the dataset's).

    Raises:
        ConfigError: ``data.collator`` takes no prompt but the model has prefixes, which training would then
            leave out and encoding would apply.
    """
    target = locate(str(node[TARGET]), f"data.collator.{TARGET}")
    if "prompt" in inspect.signature(target).parameters:
        return {"prompt": prompt}
    prefixes = prompt.to_sentence_transformers()
    if any(prefixes.values()):
        raise ConfigError(
            "data.collator",
            f"{node[TARGET]} takes no prompt, so it would train without the model's prefixes {prefixes} "
            "that encoding and the exported model apply; use densetune.data.collators.BiEncoderCollator, or "
            "clear the model's prefixes (model.kwargs: {query_prefix: '', passage_prefix: ''})",
        )
    return {}
