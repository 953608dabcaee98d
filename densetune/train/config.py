"""The training recipe's configuration: one typed source of defaults, read from YAML and ``key=value``.

A recipe YAML has seven sections (``model``, ``data``, ``loss``, ``optim``, ``train``, ``eval``, ``output``)
plus ``seed`` and ``resume``. Every key has its default here and nowhere else. Pluggable components
(batch sampler, collator, group selector, losses, model loader) are ``_target_`` nodes holding plain
settings; the recipe passes the live objects (tokenizer, dataset, seed, rank) at the call site.

The dataclasses are an OmegaConf structured-config schema: YAML and overrides merge into it, their values are
checked against the annotations (a list's items too), and ``${...}`` interpolations resolve at the end. A new
key is one annotated field with its default and a line in its section's docstring, e.g.
``dims: list[int] = field(default_factory=list)`` or ``weights: list[float] | None = None``; range checks
the types cannot express go in :func:`_check_values`.

Batch sizes: ``train.batch_size`` is the number of *queries per device per micro-batch*. Each query
brings ``n_passages`` documents (1 positive + n-1 hard negatives). The global batch, the number of
queries one optimizer step sees, is ``batch_size x world_size x grad_accum_steps``; the recipe prints both
at start. With ``loss.contrastive.cross_device: true`` in-batch negatives span all devices, so the number
of negatives per query grows with the world size.

Example:
    >>> cfg = load_config("configs/minilm_scifact.yaml", ["train.max_steps=10", "optim.lr=3e-5"])
    >>> cfg.train.batch_size
    16
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from densetune.config import (
    TARGET,
    apply_overrides,
    check_arguments,
    load_yaml,
    locate,
    omegaconf_error,
    signature_defaults,
)
from densetune.errors import ConfigError

logger = logging.getLogger("densetune.train")

# ----------------------------------------------------------------------------------------------------
# Default component nodes. Keys of a user node without `_target_` are merged into these; a node naming
# another `_target_` replaces the default whole (its own defaults then come from its signature).
# ----------------------------------------------------------------------------------------------------
# densetune's own components take their defaults from their signatures (one source: the Python API and
# the CLI train the same thing); the collator is NeMo Automodel's seed API, whose signature keeps the seed's
# defaults, so the recipe sets its own values on it here.
DEFAULT_SELECTOR = {
    TARGET: "densetune.data.groups.GroupSelector",
    **signature_defaults("densetune.data.groups.GroupSelector", ("n_passages", "positive", "negative")),
}
DEFAULT_SAMPLER = {TARGET: "densetune.data.samplers.RandomBatchSampler"}
DEFAULT_COLLATOR = {
    TARGET: "densetune.data.collators.BiEncoderCollator",
    "q_max_len": 64,
    "p_max_len": 256,
    "query_prefix": "",
    "passage_prefix": "",
    "pad_to_multiple_of": 8,
}
DEFAULT_CONTRASTIVE = {
    TARGET: "densetune.losses.ContrastiveLoss",
    **signature_defaults(
        "densetune.losses.ContrastiveLoss",
        ("temperature", "in_batch_negatives", "mask_false_negatives", "cross_device"),
    ),
}
DEFAULT_DISTILLATION = {TARGET: "densetune.losses.DistillationLoss"}
DEFAULT_RERANKER = {TARGET: "densetune.losses.RerankerLoss"}

# Live keyword arguments the recipe passes to each component at the call site (not settable in YAML).
LIVE_ARGS: dict[str, tuple[str, ...]] = {
    "model": (),  # the model path is passed positionally
    "data.selector": ("seed",),
    "data.sampler": ("batch_size", "seed", "rank", "world_size"),
    "data.collator": ("tokenizer",),
    "loss.contrastive": (),
    "loss.distillation": (),
    "loss.reranker": (),
}


def _node(default: dict[str, Any]) -> Any:
    return field(default_factory=lambda: copy.deepcopy(default), metadata={"component": default})


def _choice(default: Any, *choices: Any) -> Any:
    return field(default=default, metadata={"choices": choices})


@dataclass
class ModelConfig:
    """The model to fine-tune.

    Attributes:
        path: a model folder (plain transformers, sentence-transformers, or saved by densetune), a hub name
            available offline, or the folder of a GGUF file (with ``gguf_file``).
        pooling: ``mean`` | ``cls`` | ``last`` | ``weighted_mean``; null = the folder's setting, else
            ``mean`` for encoders and ``last`` for decoder LLMs.
        normalize: L2-normalise embeddings (cosine similarity); null = the folder's setting, else true.
        gguf_file: name of a GGUF file inside ``path`` to dequantise and load, or null.
        lora: LoRA settings (``r``, ``alpha``, ``dropout``, ``target_modules``) or null for full fine-tuning.
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30% slower).
        kwargs: further keyword arguments for the loader (``dtype``, ``bidirectional``, ``special_tokens``,
            ``attn_implementation``...; checked against its signature).
        _target_: the loader, called as ``loader(path, pooling=..., normalize=..., ...)``.

    The collator's ``query_prefix`` / ``passage_prefix`` and ``q_max_len`` / ``p_max_len`` are passed to
    the loader too, so evaluation and the exported model (sentence-transformers prompts) use what training
    used. When the collator sets no prefix, the model folder's prompts (if any) go to the collator instead.
    """

    path: str = ""
    pooling: str | None = None
    normalize: bool | None = None
    gguf_file: str | None = None
    lora: dict | None = None
    gradient_checkpointing: bool = False
    kwargs: dict = field(default_factory=dict)
    _target_: str = "densetune.models.biencoder.BiEncoder.from_pretrained"


@dataclass
class DataConfig:
    """Training data and how it becomes batches.

    Attributes:
        train: files, directories, globs or BEIR folders of training data, any supported format (detected
            from content).
        split: the qrels split used for BEIR folders.
        skip_invalid: skip bad records (counted in a report) instead of stopping at the first; also leaves
            out rows without negatives where the selector's mode needs some (counted as ``no_negatives``).
        cache_dir: where the memory-mapped Arrow copy of the data goes; null = ``$DENSETUNE_CACHE`` or
            ``~/.cache/densetune``.
        num_workers: DataLoader worker processes (0: load in the training process). null (default): auto,
            0 on a CPU (tokenising there takes cores from the model) and on CUDA one per spare core of this
            rank, at most 8 (collation is the step's CPU cost and one process cannot feed a GPU).
        selector: ``_target_`` node choosing [positive, negatives...] per example (``n_passages`` =
            1 positive + n-1 negatives); the recipe passes ``seed``.
        sampler: ``_target_`` batch sampler node; the recipe passes ``batch_size``, ``seed``, ``rank``,
            ``world_size`` (each rank gets its shard of every global batch).
        collator: ``_target_`` collator node turning Groups into tensors; the recipe passes ``tokenizer``.
            null = the model's own collator: what a cross-encoder needs (``model.collator`` tokenises pairs
            exactly as its scoring does); a bi-encoder needs a node.
    """

    train: list[str] = field(default_factory=list)
    split: str = "train"
    skip_invalid: bool = False
    cache_dir: str | None = None
    num_workers: int | None = None
    selector: dict = _node(DEFAULT_SELECTOR)
    sampler: dict = _node(DEFAULT_SAMPLER)
    collator: dict | None = _node(DEFAULT_COLLATOR)


@dataclass
class LossConfig:
    """The training objective: ``contrastive_weight * contrastive + distillation_weight * distillation`` for
    bi-encoders, ``reranker`` for cross-encoders (the model that ``model._target_`` loads decides).

    Attributes:
        contrastive: ``_target_`` node for the contrastive (InfoNCE) loss, or null to train on distillation only.
        contrastive_weight: weight of the contrastive term.
        distillation: ``_target_`` node for the distillation loss (needs teacher scores in the data), or null.
        distillation_weight: weight of the distillation term (skipped for batches without teacher scores).
        task_weights: per-task weights for same-task batches,
            ``{task: {contrastive_weight, distill_weight, teacher_temperature, student_temperature,
            distill_kind}}`` (LLM-Embedder mixes tasks so); they override ``use_train_config``'s values.
        use_train_config: ``true`` (= ``llm-embedder``) or a TASK_CONFIG name: each task's loss settings
            from ``TASK_CONFIG[name]["training"]``, as the LLM-Embedder seed's ``use_train_config`` does.
        reranker: ``_target_`` node of the cross-encoder loss
            (:class:`~densetune.losses.RerankerLoss`: listwise CE over each group, optional BCE
            and distillation from teacher scores); used only when the model is a cross-encoder.
        matryoshka_dims: train the first k dimensions of every embedding as embeddings too (Matryoshka,
            :class:`~densetune.losses.MatryoshkaLoss`): the loss is the weighted sum of the whole objective on
            the embeddings cut to each dim (and renormalised when the model normalises), e.g.
            ``[384, 256, 128, 64]``; sorted largest first; [] = off. Bi-encoders and LLM embedders only.
        matryoshka_weights: one weight per dim, in the order of ``matryoshka_dims``; [] = 1.0 each.
    """

    contrastive: dict | None = _node(DEFAULT_CONTRASTIVE)
    contrastive_weight: float = 1.0
    distillation: dict | None = field(default=None, metadata={"component": DEFAULT_DISTILLATION})
    distillation_weight: float = 1.0
    task_weights: dict = field(default_factory=dict)
    use_train_config: bool | str = False
    reranker: dict | None = _node(DEFAULT_RERANKER)
    matryoshka_dims: list[int] = field(default_factory=list)
    matryoshka_weights: list[float] = field(default_factory=list)


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule.

    Attributes:
        lr: peak learning rate.
        weight_decay: decoupled weight decay, not applied to biases and normalisation weights.
        betas, eps: AdamW moments.
        fused: use the fused AdamW kernel; null = on CUDA, and on CPU unless the parameters are FSDP shards.
        scheduler: ``constant`` | ``linear`` (to ``min_lr_ratio`` x lr) | ``cosine``.
        warmup_steps: linear warm-up steps; null = ``warmup_ratio`` x total steps.
        warmup_ratio: fraction of total steps used for warm-up when ``warmup_steps`` is null.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (linear and cosine).
        max_grad_norm: clip the global gradient norm to this; null or 0 disables clipping.
    """

    lr: float = 2e-5
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    fused: bool | None = None
    scheduler: str = _choice("linear", "constant", "linear", "cosine")
    warmup_steps: int | None = None
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0


@dataclass
class TrainConfig:
    """The loop: batch sizes, length, precision, checkpoints, distribution.

    Attributes:
        batch_size: queries per device per micro-batch (NOT the global batch; see the module docstring).
        grad_accum_steps: micro-batches per optimizer step.
        epochs: passes over the training data (ignored when ``max_steps`` is set).
        max_steps: optimizer steps to run; null = ``epochs`` x steps per epoch.
        grad_cache_chunk_size: gradient cache: encode in chunks of this many texts so memory stays
            constant while the loss sees the whole batch; null = off.
        precision: ``auto`` (bf16 autocast where the device computes bf16 natively: CUDA with bf16, CPUs
            with AVX512-BF16 or AMX; fp32 elsewhere; :mod:`densetune.precision`) | ``fp32`` | ``bf16``.
        device: ``auto`` | ``cpu`` | ``cuda``.
        save_every: write a checkpoint every this many optimizer steps; 0 = only at the end.
        keep_last: checkpoints to keep (older ones are deleted).
        log_every: log loss, lr, grad norm and throughput every this many steps.
        fsdp: shard parameters, gradients and optimizer state with FSDP2 ``fully_shard`` (for models that
            do not fit one GPU); otherwise DDP when launched with torchrun.
        find_unused_parameters: DDP option, for models with parameters that get no gradient.
        progress_bar: show a tqdm progress bar on rank 0.
        on_nonfinite: what a non-finite (NaN / inf) loss or gradient norm does: ``stop`` (default) ends the
            run with an error naming the step and its batch's query ids, found at the next log or save
            without a host sync per step (the last checkpoint stays the last good one); ``skip`` drops
            that step's update and goes on (one host sync per step, to decide before the optimizer step).
            Either way a non-finite model is never saved or exported.
        ignore_memory_check: start even when the estimated peak memory (printed at start) exceeds the
            device's memory; by default such a run is refused with the figure and the settings that lower it.
    """

    batch_size: int = 16
    grad_accum_steps: int = 1
    epochs: int = 1
    max_steps: int | None = None
    grad_cache_chunk_size: int | None = None
    precision: str = _choice("auto", "auto", "fp32", "bf16")
    device: str = _choice("auto", "auto", "cpu", "cuda")
    save_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    fsdp: bool = False
    find_unused_parameters: bool = False
    progress_bar: bool = True
    on_nonfinite: str = _choice("stop", "stop", "skip")
    ignore_memory_check: bool = False


@dataclass
class EvalConfig:
    """Periodic evaluation.

    Attributes:
        every: evaluate every this many optimizer steps; 0 = only at the end.
        dev: files of dev groups (any training format): loss, acc@1 and MRR over [positive + negatives].
        dev_split: the qrels split used when a dev entry is a BEIR folder.
        dev_n_passages: documents per dev group (1 positive + n-1 negatives, in file order).
        batch_size: queries per evaluation batch.
        beir_dir: a BEIR directory for full-corpus nDCG@10 / Recall@100, or null.
        split: the qrels split of ``beir_dir`` to evaluate on.
        rerank_run: cross-encoders: a TREC run file of first-stage results on ``beir_dir`` / ``split``; its
            top ``rerank_top_k`` are reranked and nDCG@10 / MRR@10 / Recall@100 reported (a reranker cannot
            search a whole corpus).
        rerank_top_k: documents per query to rerank from ``rerank_run``.
        at_start: evaluate before the first step too (the baseline the run improves on).
        at_end: evaluate after the last step too.
    """

    every: int = 0
    dev: list[str] = field(default_factory=list)
    dev_split: str = "dev"
    dev_n_passages: int = 4
    batch_size: int = 64
    beir_dir: str | None = None
    split: str = "test"
    rerank_run: str | None = None
    rerank_top_k: int = 100
    at_start: bool = False
    at_end: bool = True


@dataclass
class OutputConfig:
    """Where results go.

    Attributes:
        dir: output directory: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``model/``,
            ``training_curve.png``, ``tensorboard/``.
        save_model: export the final model with ``save_pretrained`` (loads in sentence-transformers).
        tensorboard: also log to TensorBoard when it is installed.
        plot: draw ``training_curve.png`` at the end.
        overwrite: a fresh run in a ``dir`` holding another run's outputs (checkpoints, model, metrics)
            discards them; false (default) refuses with an error (``resume=auto`` continues that run).
    """

    dir: str = "runs/densetune"
    save_model: bool = True
    tensorboard: bool = True
    plot: bool = True
    overwrite: bool = False


@dataclass
class RecipeConfig:
    """A whole training recipe.

    Attributes:
        seed: seeds python, numpy and torch (+ rank for dropout), the data order and negative sampling.
        resume: null (fresh run) | ``auto`` (the last complete checkpoint in ``output.dir``, if any) | a
            checkpoint directory.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    seed: int = 42
    resume: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-ready) of every resolved value."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------------


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a recipe YAML, fill defaults, apply ``key=value`` overrides, resolve ``${...}``, and validate.

    Overrides are applied after defaults are filled, so any key of the schema can be overridden even
    when the YAML does not mention it (``train.max_steps=10``). Values in the YAML and in overrides may be
    OmegaConf interpolations (``eval.batch_size: ${train.batch_size}``, ``${oc.env:VAR}``), resolved once
    everything is merged, so the saved ``config.yaml`` holds the resolved values.

    Args:
        path: the YAML file, or None for defaults only.
        overrides: dotted ``key=value`` strings (values parsed as YAML).

    Raises:
        ConfigError: naming the key and what was expected (for unknown keys: the valid ones).
    """
    conf = merge_defaults(load_yaml(path) if path is not None else {})
    # The NeMo aliases are not schema keys, so an override naming one adds it (no "+" needed).
    aliases = {f"data.selector.{name}" for name in NEGATIVE_ALIASES}
    overrides = [f"+{o}" if o.split("=", 1)[0] in aliases else o for o in overrides or []]
    return from_dict(apply_overrides(conf, overrides))


def merge_defaults(raw: Mapping[str, Any]) -> DictConfig:
    """The schema (:class:`RecipeConfig` as an OmegaConf structured config) overlaid with ``raw``.

    Unknown keys and values of the wrong type are errors naming the key. A component node merges into its
    default unless it names another ``_target_``: then it replaces the default whole (its own defaults come
    from its signature). ``${...}`` interpolations stay until :func:`from_dict` resolves them.
    """
    conf = OmegaConf.structured(RecipeConfig)
    raw = _fit(conf, raw)
    try:
        return OmegaConf.merge(conf, raw)
    except OmegaConfBaseException as err:
        raise omegaconf_error(err, raw) from None


_SECTIONS = {
    name: tp for name, tp in typing.get_type_hints(RecipeConfig).items() if dataclasses.is_dataclass(tp)
}
# Component nodes by dotted key, with their default node; the keys typed as a list of strings.
COMPONENTS = {
    f"{name}.{f.name}": f.metadata["component"]
    for name, tp in _SECTIONS.items()
    for f in dataclasses.fields(tp)
    if "component" in f.metadata
}
_STRING_LISTS = [
    f"{name}.{field}"
    for name, tp in _SECTIONS.items()
    for field, hint in typing.get_type_hints(tp).items()
    if hint == list[str]
]


def _fit(conf: DictConfig, raw: Any) -> dict[str, Any]:
    """``raw`` shaped, and ``conf`` readied, for OmegaConf's merge where the recipe means more than the types
    say: an empty section (all commented out) is its defaults, a lone string is a one-item list of strings
    (unless it is one ``${...}``, which may name a list), and a component node merges into its default (the
    default node when the schema's is null) or, naming another ``_target_``, replaces it."""
    if not isinstance(raw, Mapping):
        raise ConfigError("<root>", f"expected a mapping, got {type(raw).__name__} {raw!r}")
    raw = copy.deepcopy(dict(raw))
    for name in _SECTIONS:
        if name in raw and raw[name] is None:
            raw[name] = {}
        elif name in raw and not isinstance(raw[name], Mapping):
            raise ConfigError(name, f"expected a mapping, got {type(raw[name]).__name__} {raw[name]!r}")
    for key, default in COMPONENTS.items():
        section, name = key.split(".")
        node = raw.get(section, {}).get(name)
        if node is None:
            continue
        if not isinstance(node, Mapping):
            raise ConfigError(key, f"expected a component mapping with {TARGET} (or null), got {node!r}")
        current = conf[section][name]
        base = current if current is not None else default
        if node.get(TARGET, base[TARGET]) != base[TARGET]:
            conf[section][name] = {}
        elif current is None:
            conf[section][name] = default
    for key in _STRING_LISTS:
        section, name = key.split(".")
        value = raw.get(section, {}).get(name)
        if isinstance(value, str) and not value.startswith("${"):
            raw[section][name] = [value]
    return raw


# Classic NeMo's names for the number of hard negatives per query (SBERT's model.data.hard_negatives_to_train,
# GPT embedding's num_hard_negatives): accepted in the selector node as n_passages = value + 1.
NEGATIVE_ALIASES = ("hard_negatives_to_train", "num_hard_negatives")


def _resolve_negative_aliases(cfg: RecipeConfig) -> None:
    """Rewrite ``data.selector.{hard_negatives_to_train,num_hard_negatives}: k`` as ``n_passages: k + 1``."""
    node = cfg.data.selector
    given = {name: node.pop(name) for name in NEGATIVE_ALIASES if name in node}
    if not given:
        return
    values = set(map(repr, given.values()))
    if len(values) > 1:
        raise ConfigError(
            "data.selector." + " / data.selector.".join(given),
            f"disagree ({given}); give one number of negatives",
        )
    name, k = next(iter(given.items()))
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(
            f"data.selector.{name}", f"expected an integer >= 0 (hard negatives per query), got {k!r}"
        )
    node["n_passages"] = k + 1
    logger.info(
        "data.selector.%s=%d (classic NeMo's name) means n_passages=%d (1 positive + %d)", name, k, k + 1, k
    )


def from_dict(data: DictConfig | Mapping[str, Any]) -> RecipeConfig:
    """A validated :class:`RecipeConfig` from :func:`merge_defaults`' result (a plain mapping is merged first),
    with every ``${...}`` interpolation resolved."""
    conf = data if isinstance(data, DictConfig) else merge_defaults(data)
    try:
        cfg = OmegaConf.to_object(conf)
    except OmegaConfBaseException as err:
        raise omegaconf_error(err) from None
    _resolve_negative_aliases(cfg)
    _check_choices(cfg)
    _check_values(cfg)
    return cfg


def _check_choices(cfg: RecipeConfig) -> None:
    for section in _SECTIONS:
        values = getattr(cfg, section)
        for f in dataclasses.fields(values):
            choices, value = f.metadata.get("choices"), getattr(values, f.name)
            if choices and value not in choices:
                raise ConfigError(
                    f"{section}.{f.name}", f"expected one of {', '.join(map(str, choices))}; got {value!r}"
                )


def _check_values(cfg: RecipeConfig) -> None:
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
    from densetune.data.prompts import train_config_name

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


def save_config(cfg: RecipeConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (every key, defaults included)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False, default_flow_style=False)


def diff_configs(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config dicts: ``{key: (old, new)}``."""
    out: dict[str, tuple[Any, Any]] = {}
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(diff_configs(a, b, f"{prefix}{k}."))
        elif a != b:
            out[f"{prefix}{k}"] = (a, b)
    return out
