"""The training recipe's configuration schema: one typed source of defaults (read by :mod:`densetune.train.config`).

A recipe YAML has seven sections (``model``, ``data``, ``loss``, ``optim``, ``train``, ``eval``, ``output``)
plus ``seed`` and ``resume``. Every key has its default here and nowhere else. Pluggable components
(batch sampler, collator, group selector, losses, model loader) are ``_target_`` nodes holding plain
settings; the recipe passes the live objects (tokenizer, dataset, seed, rank) at the call site.

The dataclasses are an OmegaConf structured-config schema: YAML and overrides merge into it, their values are
checked against the annotations (a list's items too), and ``${...}`` interpolations resolve at the end. A new
key is one annotated field with its default and a line in its section's docstring, e.g.
``dims: list[int] = field(default_factory=list)`` or ``weights: list[float] | None = None``; range checks
the types cannot express go in :func:`densetune.train.checks.check_values`.

Batch sizes: ``train.batch_size`` is the number of *queries per device per micro-batch*. Each query
brings ``n_passages`` documents (1 positive + n-1 hard negatives). The global batch, the number of
queries one optimizer step sees, is ``batch_size x world_size x grad_accum_steps``; the recipe prints both
at start. With ``loss.contrastive.cross_device: true`` in-batch negatives span all devices, so the number
of negatives per query grows with the world size.

Example:
    >>> from densetune.train.config import load_config
    >>> cfg = load_config("configs/minilm_scifact.yaml", ["train.max_steps=10", "optim.lr=3e-5"])
    >>> cfg.train.batch_size
    16
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from densetune.config import TARGET, signature_defaults

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
    the loader too; the loaded model's prompt (those prefixes, else the model folder's prompts) is then the
    one the collator formats training texts with (:func:`densetune.train.checks.training_prompt`), so
    evaluation and the exported model (sentence-transformers prompts) use what training used.
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


SECTIONS = {
    name: tp for name, tp in typing.get_type_hints(RecipeConfig).items() if dataclasses.is_dataclass(tp)
}
# The sections (name -> dataclass); component nodes by dotted key, with their default node; the keys typed
# as a list of strings.
COMPONENTS = {
    f"{name}.{f.name}": f.metadata["component"]
    for name, tp in SECTIONS.items()
    for f in dataclasses.fields(tp)
    if "component" in f.metadata
}
STRING_LISTS = [
    f"{name}.{field}"
    for name, tp in SECTIONS.items()
    for field, hint in typing.get_type_hints(tp).items()
    if hint == list[str]
]
