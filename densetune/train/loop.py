"""The training recipe: one class that sets up model, data, optimizer and loss, then runs one explicit loop.

``TrainRecipe(cfg).setup()`` builds everything in a fixed order (see :meth:`TrainRecipe.setup`), ``train()``
runs optimizer steps with gradient accumulation (or the gradient cache), clipping, logging, periodic
evaluation and atomic checkpoints, and ``finish()`` exports the model, draws the curves and prints a summary.
Launched by ``torchrun`` it trains with DDP (or FSDP2 with ``train.fsdp=true``); only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from densetune.caps import MAX_BATCH, MAX_STEPS, env_cap
from densetune.config import instantiate, locate
from densetune.data.batch import Batch, PairBatch, typed_batch
from densetune.distributed import gather_objects, init_distributed
from densetune.errors import ConfigError, DensetuneError
from densetune.hostmem import HEAP_PEAK_FACTOR, reuse_freed_memory
from densetune.precision import resolve_precision
from densetune.train import checkpoint as ckpt
from densetune.train.checks import collator_prompt, model_loader_kwargs, training_prompt
from densetune.train.config import diff_configs, save_config
from densetune.train.logging import CURVE_FILE, METRICS_FILE, MetricsLogger, plot_curves
from densetune.train.memory import GIB, check_memory, device_memory, estimate_memory
from densetune.train.optim import build_optimizer, build_scheduler, lr_factor, warmup_steps
from densetune.train.preflight import preflight
from densetune.train.rundir import OutputDir, new_run_id
from densetune.train.schema import RecipeConfig
from densetune.train.sharding import (
    apply_fsdp,
    load_model_state,
    pick_device,
    trainable_state,
)
from densetune.train.steps import EmbeddingStep, RerankerStep, build_step, group_metrics, is_reranker


class TrainRecipe:
    """Fine-tune a bi-encoder or LLM embedder (contrastive, optional distillation, LoRA) or a cross-encoder
    reranker (listwise / BCE / distillation): ``model._target_`` decides; :mod:`densetune.train.steps`
    holds what differs between the two.

    Args:
        cfg: a validated :class:`~densetune.train.schema.RecipeConfig`.

    Example:
        >>> recipe = TrainRecipe(load_config("configs/minilm_scifact.yaml", ["train.max_steps=20"]))
        >>> recipe.setup()
        >>> recipe.train()
        >>> summary = recipe.finish()
    """

    def __init__(self, cfg: RecipeConfig):
        _cap_batch(cfg)
        self.cfg = cfg
        self.out_dir = Path(cfg.output.dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        self.outdir = OutputDir(self.out_dir)
        self.rank, self.world_size, self.local_rank = init_distributed(cfg.train.device)
        self.is_main = self.rank == 0
        self.device = pick_device(cfg.train.device, self.local_rank)
        if cfg.train.fsdp and self.world_size < 2:
            # FSDP2 runs on GPUs (nccl) and on CPUs (gloo) alike; it only needs processes to shard over.
            raise ConfigError(
                "train.fsdp",
                f"FSDP shards over several processes: launch with torchrun --nproc_per_node=N, N >= 2 "
                f"(here: {self.world_size} process), or set train.fsdp=false",
            )
        self.precision = resolve_precision(cfg.train.precision, self.device)  # printed in _print_plan
        self.use_bf16 = self.precision.bf16
        self.state = ckpt.ResumeState(
            seed=cfg.seed,
            world_size=self.world_size,
            batch_size=cfg.train.batch_size,
            grad_accum_steps=cfg.train.grad_accum_steps,
        )
        self.last_eval: dict[str, float] = {}
        self.last_checkpoint: Path | None = None
        self.model_dir: Path | None = None
        self._resume_from: Path | None = None
        self._loader_state: dict[str, Any] | None = None  # this rank's data position from a checkpoint
        self._window = _Window()

    # ------------------------------------------------------------------------------------------------
    # Setup
    # ------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Build everything, in this order and for these reasons:

        1. seeds and the resume decision: the checkpoint's sidecar is read before anything heavy, so a
           resume that cannot be exact fails at once; the seed precedes the model so LoRA's random init
           is the same on every rank (FSDP does not broadcast weights);
        1b. the pre-flight (:mod:`densetune.train.preflight`): every input file the run will read (train,
           dev, evaluation corpus / queries / qrels, rerank run) is read and checked before the model
           loads, so a bad line costs seconds, not a loaded model and the steps before the first evaluation;
        2. the model (and its DDP / FSDP wrapping): the data needs its tokenizer;
        3. the data: the schedule needs the number of batches per epoch;
        4. the optimizer and schedule: they need the (wrapped) parameters and the step count;
        5. the losses;
        6. the checkpoint's tensors, last: every object they restore exists by then, and the RNG states
           are restored after all set-up randomness is spent.
        """
        if self.is_main:
            self._claim_output_dir()
        _seed_everything(self.cfg.seed)
        self._setup_resume()
        self.inputs = preflight(self.cfg)
        self.log = MetricsLogger(
            self.out_dir,
            enabled=self.is_main,
            tensorboard=self.cfg.output.tensorboard,
            progress_bar=self.cfg.train.progress_bar,
            resume_step=self.state.step if self._resume_from else None,
        )
        if self.log.dropped:
            self._say(
                f"{self.log.path}: dropped {self.log.dropped} record(s) after step {self.state.step}, written "
                "after the checkpoint this run resumes from"
            )
        self._setup_model()
        self._check_memory()
        _seed_everything(self.cfg.seed + self.rank)  # dropout differs per rank; data order uses the base seed
        self._setup_data()
        self._setup_optimizer()
        self._setup_loss()
        if self._resume_from is not None:
            self._load_checkpoint(self._resume_from)
        if self.is_main:
            save_config(self.cfg, self.out_dir / "config.yaml")
        self._print_plan()

    def run(self) -> dict[str, Any]:
        """The whole recipe: set up, train, finish (returns the summary), and leave the process group."""
        try:
            self.setup()
            self.train()
            return self.finish()
        finally:
            self.cleanup()

    def _reuse_host_memory(self) -> bool:
        """On a CPU the activations are host memory: reuse the last step's pages (:mod:`densetune.hostmem`),
        unless the larger resident peak that costs would not fit the memory the run may use."""
        if self.device.type != "cpu":
            return False
        return self.device_memory is None or self.memory.total * HEAP_PEAK_FACTOR <= self.device_memory

    def _claim_output_dir(self) -> None:
        """Lock ``output.dir`` for this process (rank 0) and remove what interrupted saves left there.

        Nothing is written into the directory before the lock is held, so two runs never mix their files.
        """
        self.outdir.lock()
        for stale in self.outdir.remove_stale_temporaries():
            self._say(f"removed {stale}, left by an interrupted save")

    def _own_run(self, path: Path | None) -> None:
        """Settle which run this is (rank 0): a fresh run refuses, or with ``output.overwrite`` discards,
        another run's outputs and takes a new id; a resumed run keeps its checkpoint's id."""
        owner = self.outdir.run_id()
        inside = path is not None and path.resolve().parent == self.ckpt_root.resolve()
        if not inside:
            self.outdir.claim_fresh(self.cfg.output.overwrite, self._say)
            owner = None
        run_id = self.state.run_id or owner or new_run_id()
        self.state.run_id = run_id
        self.outdir.write_run_id(run_id)

    def _setup_resume(self) -> None:
        """Pick the checkpoint to resume from and say which values win (config or checkpoint).

        Progress (step, epoch, data position), weights, optimizer moments, schedule position and RNG states
        come from the checkpoint; hyperparameters (lr, schedule shape, max_steps, logging, eval, output)
        from the config. Values that fix the data order must match, or the resume could not be exact.
        ``resume=auto`` skips damaged checkpoints (and those of another run) for the newest intact one.
        """
        path = ckpt.resolve_resume(
            self.cfg.resume, self.ckpt_root, say=self._say, run_id=self.outdir.run_id()
        )
        if path is None:
            if self.cfg.resume == "auto":
                self._say(f"resume=auto: no intact checkpoint in {self.ckpt_root}; starting a fresh run")
            if self.is_main:
                self._own_run(None)
            return
        saved = ckpt.ResumeState.from_json((path / ckpt.STATE_FILE).read_text(encoding="utf-8"))
        for key in ckpt.DATA_ORDER_KEYS:
            old, new = getattr(saved, key), getattr(self.state, key)
            if old != new:
                name = "world size (torchrun --nproc_per_node)" if key == "world_size" else key
                raise ConfigError(
                    name,
                    f"checkpoint {path} was trained with {old}, this run has {new}: the data order would change "
                    "and the run could not continue where it stopped. Use the same value, or start a fresh run "
                    "(resume=null).",
                )
        self._resume_from = path
        self.state = saved
        if self.is_main:
            self._own_run(path)
        self._say(
            f"resuming from {path} at step {saved.step} (epoch {saved.epoch}, batch {saved.batches_in_epoch}). "
            "Checkpoint wins for weights, optimizer moments, schedule position, data position and RNG states; "
            "the config wins for every other value."
        )
        old_cfg = yaml.safe_load((path / ckpt.CONFIG_FILE).read_text(encoding="utf-8")) or {}
        for key, (old, new) in diff_configs(old_cfg, self.cfg.to_dict()).items():
            if key != "resume":
                self._say(f"  {key}: checkpoint had {old!r}, config says {new!r} -> config wins")

    def _setup_model(self) -> None:
        """Load the model with its ``model._target_`` loader, move it to the device, wrap it for DDP / FSDP.

        ``self.raw_model`` is the unwrapped model (tokenizer, encode_texts, save_pretrained, state dicts);
        ``self.model`` is what the loop calls: the DDP / FSDP module under torchrun, else the same object.
        """
        load = locate(self.cfg.model._target_, "model._target_")
        raw = _load_model(load, self.cfg.model.path, model_loader_kwargs(self.cfg))
        raw.to(self.device)
        self.raw_model = raw
        self.tokenizer = raw.tokenizer
        step_kind = RerankerStep if is_reranker(raw) else EmbeddingStep
        self.unused = (
            []
            if self.cfg.train.find_unused_parameters
            else _freeze_unused(raw, step_kind.probe(raw, self.tokenizer))
        )
        self.trainable_names = {n for n, p in raw.named_parameters() if p.requires_grad}
        self.param_counts = (
            sum(p.numel() for p in raw.parameters() if p.requires_grad),
            sum(p.numel() for p in raw.parameters()),
        )
        if self.cfg.train.fsdp:
            self.model = apply_fsdp(raw, bf16=self.use_bf16)
        elif self.world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(
                raw,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.cfg.train.find_unused_parameters,
            )
        else:
            self.model = raw

    def _check_memory(self) -> None:
        """Estimate the step's peak memory per device (:mod:`densetune.train.memory`) and refuse a run that
        cannot fit, before any data is batched or step is run."""
        self.memory = estimate_memory(
            self.raw_model,
            self.cfg,
            group_size=self.inputs.selector.group_size,
            bf16=self.use_bf16,
            world_size=self.world_size,
        )
        self.device_memory = device_memory(self.device)
        check_memory(self.memory, self.device_memory, self.cfg, self.global_batch_size)

    def _setup_data(self) -> None:
        """Examples -> groups (selector) -> batches of indices (sampler, this rank's shard) -> tensors (collator).

        The loader is torchdata's StatefulDataLoader: its state (with the batch sampler's) goes into every
        checkpoint, so a resume continues mid-epoch at the exact batch. It gets its own generator so making
        an iterator never draws from the global torch RNG (dropout must not depend on when loaders start).
        """
        from densetune.data.dataset import RetrievalTrainDataset

        dcfg = self.cfg.data
        self.selector = self.inputs.selector
        # the run's one prompt: the dataset applies its task layer, the collator its prefixes, the saved
        # model keeps them (densetune.data.prompts.Prompt)
        self.prompt = training_prompt(self.raw_model, self.cfg, self.selector)
        self.dataset = RetrievalTrainDataset(
            self.inputs.train_store, self.selector, exclude=self.inputs.skip_rows, prompt=self.prompt
        )
        self.sampler = instantiate(
            dcfg.sampler,
            "data.sampler",
            **_sampler_data_args(dcfg.sampler, self.dataset),
            batch_size=self.cfg.train.batch_size,
            seed=self.cfg.seed,
            rank=self.rank,
            world_size=self.world_size,
        )
        if dcfg.collator is None:  # the model's own: a cross-encoder tokenises pairs as it scores them
            self.collator = self.raw_model.collator
        else:
            try:
                self.collator = instantiate(
                    dcfg.collator,
                    "data.collator",
                    tokenizer=self.tokenizer,
                    **collator_prompt(dcfg.collator, self.prompt),
                )
            except ConfigError as err:  # a prefix that disagrees with the model's (Prompt.check_agrees)
                if err.key in ("query_prefix", "passage_prefix", "use_dataset_instruction"):
                    raise ConfigError(f"data.collator.{err.key}", err.message) from None
                raise
        self._workers = loader_workers(dcfg.num_workers, self.device)
        self.loader = self._make_loader(self._workers)
        self.batches_per_epoch = len(self.sampler)
        if self.batches_per_epoch == 0:
            raise ConfigError(
                "train.batch_size",
                f"{len(self.dataset)} training groups make no batch of {self.cfg.train.batch_size} per device "
                f"on {self.world_size} device(s); lower train.batch_size",
            )
        accum = self.cfg.train.grad_accum_steps
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / accum)
        self.total_steps = self.cfg.train.max_steps or self.cfg.train.epochs * self.steps_per_epoch
        cap = env_cap(MAX_STEPS)
        if cap is not None and cap < self.total_steps:
            self._say(f"{MAX_STEPS}={cap}: training stops after {cap} of {self.total_steps} steps")
            self.total_steps = cap
        self.state.total_steps = self.total_steps
        self.dev_loader = self._build_dev_loader()

    def _make_loader(self, workers: int) -> Any:
        """The StatefulDataLoader over this rank's batches, collating in ``workers`` processes."""
        from torchdata.stateful_dataloader import StatefulDataLoader

        if workers:
            # forked workers must not inherit the tokenizer's thread pool (Hugging Face tokenizers warns and
            # would disable it itself); each worker tokenises its own batches instead
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        with warnings.catch_warnings():
            # torchdata calls torch.set_vital, which torch 2.13 deprecates: noise in every run, nothing to act on
            warnings.filterwarnings("ignore", message=".*set_vital.*deprecated", category=UserWarning)
            return StatefulDataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                collate_fn=TypedCollate(self.collator),
                num_workers=workers,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(self.cfg.seed),
            )

    def _build_dev_loader(self) -> Any:
        """Dev groups in file order: the positive then the first ``eval.dev_n_passages - 1`` negatives."""
        if not self.cfg.eval.dev:
            return None
        from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

        from densetune.data.dataset import RetrievalTrainDataset
        from densetune.data.groups import GroupSelector

        store = self.inputs.dev_store
        selector = GroupSelector(
            self.cfg.eval.dev_n_passages, positive="first", negative="cycle", seed=self.cfg.seed
        )
        # dev groups read as training groups do: the same prompt (task instructions, if any)
        dataset = RetrievalTrainDataset(store, selector, prompt=self.prompt)
        batches = BatchSampler(SequentialSampler(dataset), self.cfg.eval.batch_size, drop_last=False)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=TypedCollate(self.collator))

    def _setup_optimizer(self) -> None:
        """AdamW (no decay on biases / norm weights) and the warm-up + decay schedule over ``total_steps``.

        Built after wrapping: FSDP2 replaces parameters with sharded DTensors, which the optimizer must hold.
        """
        self.optimizer = build_optimizer(self.raw_model, self.cfg.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.optim, self.total_steps)
        self.trainable = [p for p in self.raw_model.parameters() if p.requires_grad]

    def _setup_loss(self) -> None:
        """The objective of the model's kind (:func:`densetune.train.steps.build_step`): for bi-encoders
        ``contrastive_weight x contrastive + distillation_weight x distillation`` (distillation skipped for
        batches without teacher scores, both terms scaled alike under cross-device negatives, so DDP's
        gradient average is the global-batch gradient); for cross-encoders ``loss.reranker``."""
        self.step = build_step(self.cfg, self.raw_model, self._autocast)

    def _load_checkpoint(self, path: Path) -> None:
        """Restore weights, optimizer, schedule position, this rank's data position and RNG states."""
        _, model_state, optim_state, trainer_state = ckpt.load_checkpoint(path)
        load_model_state(
            self.model if self.cfg.train.fsdp else self.raw_model, model_state, self.cfg.train.fsdp
        )
        if self.cfg.train.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.model, self.optimizer, optim_state, options=StateDictOptions(full_state_dict=True)
            )
        else:
            self.optimizer.load_state_dict(optim_state)
        self.scheduler.load_state_dict(trainer_state[ckpt.SCHEDULER_KEY])
        # The schedule's shape comes from the config (lr, warm-up, total steps), its position from the checkpoint.
        warm = warmup_steps(self.cfg.optim, self.total_steps)
        factor = lr_factor(
            self.scheduler.last_epoch,
            total_steps=self.total_steps,
            warmup=warm,
            kind=self.cfg.optim.scheduler,
            min_ratio=self.cfg.optim.min_lr_ratio,
        )
        self.scheduler.base_lrs = [self.cfg.optim.lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.cfg.optim.lr
            group["lr"] = self.cfg.optim.lr * factor
        self._loader_state = trainer_state[ckpt.DATALOADER_KEY][self.rank]
        ckpt.restore_rng(trainer_state[ckpt.RNG_KEY][self.rank])

    # ------------------------------------------------------------------------------------------------
    # One step
    # ------------------------------------------------------------------------------------------------

    def _optimizer_step(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Clip (or just measure) the gradient norm, step AdamW and the schedule; returns the norm, or
        None when ``train.on_nonfinite=skip`` dropped this step's update (``loss`` or the norm not finite)."""
        max_norm = self.cfg.optim.max_grad_norm or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        self._window.lr = self.optimizer.param_groups[0]["lr"]  # the lr this step uses
        if self.cfg.train.on_nonfinite == "skip" and not self._finite_here(loss, norm):
            self._nonfinite.counter += 1
            self.scheduler.step()  # the schedule keeps counting steps, as the data position does
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self._nonfinite.observe(loss, norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    def _finite_here(self, loss: torch.Tensor, norm: torch.Tensor) -> bool:
        """``on_nonfinite=skip``: whether this step's loss and gradient norm are finite on every rank.

        The one host sync per step skipping costs: the answer is needed before the optimizer step.
        """
        ok = (torch.isfinite(loss) & torch.isfinite(norm)).to(torch.int32)
        if self.world_size > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if bool(ok):
            return True
        ids = self._nonfinite.ids.get(self.state.step + 1, [])
        self._say(
            f"step {self.state.step + 1}: non-finite loss or gradient norm, update skipped "
            f"(train.on_nonfinite=skip); batch query ids: {_show_ids(ids)}"
        )
        return False

    # ------------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------------

    def train(self) -> None:
        """Run optimizer steps until ``total_steps``: accumulate micro-batches, step, log, evaluate, save."""
        with reuse_freed_memory(self._reuse_host_memory()):
            self._train_steps()

    def _train_steps(self) -> None:
        cfg, st = self.cfg.train, self.state
        accum = cfg.grad_accum_steps
        if self.cfg.eval.at_start and st.step == 0 and self._has_eval():
            self.evaluate()
        self.log.start_progress(self.total_steps, initial=st.step)
        self.model.train()
        self._nonfinite = _NonFiniteWatch(self.device, st.step)
        self._window = _Window()
        t_start = time.perf_counter() - st.elapsed_s
        while st.step < self.total_steps:
            self.sampler.set_epoch(st.epoch)
            self.dataset.set_epoch(st.epoch)
            if self._loader_state is not None:
                saved = saved_loader_workers(self._loader_state)
                if saved != self.loader.num_workers:
                    self._say(
                        f"data.num_workers: checkpoint had {saved}, this run {self.loader.num_workers} -> "
                        "checkpoint wins until this epoch ends (a saved data position needs its worker count)"
                    )
                    self.loader = self._make_loader(saved)
                self.loader.load_state_dict(self._loader_state)  # applied by the next iter(): mid-epoch
                self._loader_state = None
            elif self.loader.num_workers != self._workers:
                self.loader = self._make_loader(self._workers)
            batches = iter(self.loader)
            while st.batches_in_epoch < self.batches_per_epoch and st.step < self.total_steps:
                # The last window of an epoch may be short; its loss is averaged over the batches it has.
                n_micro = min(accum, self.batches_per_epoch - st.batches_in_epoch)
                step_loss: Any = 0.0
                for i in range(n_micro):
                    batch = next(batches)
                    self._nonfinite.note(st.step + 1, batch.query_ids)
                    self._window.add(*self.step.count(batch))
                    batch = batch.to(self.device)
                    with self._no_sync(last=i == n_micro - 1):
                        step_loss = (
                            step_loss + self.step.backward(self.model, batch, scale=1.0 / n_micro) / n_micro
                        )
                    st.batches_in_epoch += 1
                norm = self._optimizer_step(step_loss)
                if norm is not None:  # a skipped step adds nothing to the logged averages
                    self._window.loss += step_loss
                    self._window.grad_norm += norm
                    self._window.steps += 1
                st.step += 1
                self.log.advance()
                # "End of epoch e" is stored as "start of epoch e+1", in the state and in checkpoints.
                if st.batches_in_epoch == self.batches_per_epoch:
                    st.epoch, st.batches_in_epoch = st.epoch + 1, 0
                st.elapsed_s = time.perf_counter() - t_start
                if st.step % cfg.log_every == 0 or st.step == self.total_steps:
                    self._flush_window()
                window, paused = self._window, time.perf_counter()
                if self.cfg.eval.every and st.step % self.cfg.eval.every == 0 and st.step < self.total_steps:
                    self.evaluate()
                if cfg.save_every and st.step % cfg.save_every == 0 and st.step < self.total_steps:
                    self.save_checkpoint()  # flushes the window first
                # Throughput counts training time only: move the window's start past evaluation and saving.
                self._window.start = time.perf_counter() - (
                    paused - window.start if self._window is window else 0
                )
                if st.batches_in_epoch == 0:
                    break  # the epoch is used up: the next one needs a fresh iterator
        st.elapsed_s = time.perf_counter() - t_start
        self.log.end_progress()

    def _flush_window(self) -> None:
        """Log loss, lr, grad norm and throughput (all ranks' samples and real tokens) since the last log.

        First the steps since the last log are checked for a non-finite loss or gradient norm (one host
        sync per log line): ``train.on_nonfinite=stop`` ends the run there, before anything is logged or saved.
        """
        self._stop_if_nonfinite()
        window, self._window = self._window, _Window()
        if window.steps == 0:
            return
        counts = torch.tensor([window.samples, window.tokens], dtype=torch.float64, device=self.device)
        loss = torch.as_tensor(window.loss, dtype=torch.float64, device=self.device)
        if self.world_size > 1:  # a sync point, once per log line
            dist.all_reduce(counts)
            dist.all_reduce(loss)
            loss /= self.world_size
        seconds = max(time.perf_counter() - window.start, 1e-9)
        samples, tokens = counts.tolist()
        self.state.samples_seen += int(samples)
        self.state.tokens_seen += int(tokens)
        metrics = {
            "loss": float(loss) / window.steps,
            "lr": window.lr,
            "grad_norm": float(window.grad_norm) / window.steps,
            "samples_per_s": samples / seconds,
            "tokens_per_s": tokens / seconds,
            "epoch": self.state.epoch + self.state.batches_in_epoch / self.batches_per_epoch,
        }
        self.state.last_loss = metrics["loss"]
        self.log.log(self.state.step, metrics, kind="train")

    def _stop_if_nonfinite(self) -> None:
        """Raise :class:`NonFiniteError` when a step since the last check had a non-finite loss or norm."""
        watch = getattr(self, "_nonfinite", None)
        found = watch.check(self.world_size) if watch is not None else None
        if found is None:
            return
        step, ids = found
        last = f"the last good one is {self.last_checkpoint}" if self.last_checkpoint else "there is none yet"
        raise NonFiniteError(
            f"non-finite loss or gradient norm at step {step} (batch query ids: {_show_ids(ids)}); "
            f"train.on_nonfinite=stop: stopped without saving a checkpoint or the model ({last}). "
            "Lower optim.lr, check teacher scores with densetune validate, or set train.on_nonfinite=skip"
        )

    # ------------------------------------------------------------------------------------------------
    # Evaluation
    # ------------------------------------------------------------------------------------------------

    def _has_eval(self) -> bool:
        return self.dev_loader is not None or bool(self.cfg.eval.beir_dir)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Dev-group loss / acc@1 / MRR and, with ``eval.beir_dir``, full-corpus nDCG@10 / Recall@100.

        Under DDP rank 0 evaluates alone (the unwrapped model needs no collectives) while the others wait;
        under FSDP every rank runs the same batches, because each forward gathers sharded weights.
        """
        ecfg = self.cfg.eval
        metrics: dict[str, float] = {}
        run_here = self.is_main or self.cfg.train.fsdp
        model = self.model if self.cfg.train.fsdp else self.raw_model
        was_training = model.training
        model.eval()
        if self.cfg.train.fsdp:
            # encode_texts (corpus evaluation) calls encode(), not forward(), so FSDP's hooks would never
            # gather the root's own weights (the embeddings): gather them for the whole evaluation.
            model.unshard()
        if run_here and self.dev_loader is not None:
            metrics.update(self._evaluate_groups(model))
        if run_here and ecfg.beir_dir:
            metrics.update(self._evaluate_corpus(model))
        if self.cfg.train.fsdp:
            # Register the sharded parameters again: the optimizer holds those, and saving its state dict
            # looks them up by the module's current parameters (KeyError while the root stays gathered).
            model.reshard()
        model.train(was_training)
        if self.world_size > 1:
            dist.barrier()
        if metrics:
            self.last_eval = metrics
            self.log.log(self.state.step, metrics, kind="eval")
        return metrics

    def _evaluate_groups(self, model: nn.Module) -> dict[str, float]:
        """Over each dev group's [positive + negatives]: mean cross-entropy, acc@1 and MRR (positive at 0)."""
        scores = [self.step.group_scores(model, b.to(self.device)) for b in self.dev_loader]
        return group_metrics(scores, self.step.dev_temperature)

    def _evaluate_corpus(self, model: nn.Module) -> dict[str, float]:
        """Full-corpus nDCG@10 and Recall@100 on ``eval.beir_dir`` / ``eval.split`` (exact search); for a
        cross-encoder nDCG@10 / MRR@10 / Recall@100 of ``eval.rerank_run``'s top ``rerank_top_k`` reranked."""
        from densetune.retrieval.evaluate import evaluate_model

        ecfg = self.cfg.eval
        if self.step.kind == "cross-encoder":
            from densetune.retrieval.rerank import rerank_beir

            with self._autocast():
                result = rerank_beir(
                    self.raw_model,
                    ecfg.beir_dir,
                    ecfg.split,
                    ecfg.rerank_run,
                    top_k=ecfg.rerank_top_k,
                    batch_size=ecfg.batch_size,
                )
            return {k: float(v) for k, v in result.items()}
        with self._autocast():
            result = evaluate_model(
                model if self.cfg.train.fsdp else self.raw_model,
                ecfg.beir_dir,
                ecfg.split,
                metrics=("ndcg@10", "recall@100"),
                batch_size=ecfg.batch_size,
                cache_dir=self.cfg.data.cache_dir,
                show_progress=False,
            )
        return {k: float(v) for k, v in result.items()}

    # ------------------------------------------------------------------------------------------------
    # Checkpoints and the end of the run
    # ------------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; every rank contributes its RNG and data
        position), then prune to ``train.keep_last``."""
        self._flush_window()  # the log then holds every step the checkpoint holds (and stops on NaN)
        model_state = trainable_state(
            self.model if self.cfg.train.fsdp else self.raw_model, self.trainable_names
        )
        _refuse_nonfinite_weights(model_state, self.state.step)
        if self.cfg.train.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            optim_state = get_optimizer_state_dict(
                self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        else:
            optim_state = self.optimizer.state_dict()
        # At an epoch boundary the position is "start of the next epoch": no loader state to restore.
        loader_state = self.loader.state_dict() if self.state.batches_in_epoch else None
        local = {"loader": loader_state, "rng": ckpt.capture_rng()}
        gathered = gather_objects(local, self.world_size)
        path = None
        if self.is_main:
            trainer_state = {
                ckpt.SCHEDULER_KEY: self.scheduler.state_dict(),
                ckpt.DATALOADER_KEY: [g["loader"] for g in gathered],
                ckpt.RNG_KEY: [g["rng"] for g in gathered],
            }
            config_yaml = yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
            path = ckpt.save_checkpoint(
                self.ckpt_root, self.state, model_state, optim_state, trainer_state, config_yaml
            )
            ckpt.prune_checkpoints(self.ckpt_root, self.cfg.train.keep_last, current=path)
            self.log.print(f"saved checkpoint {path}")
        if self.world_size > 1:
            dist.barrier()
        self.last_checkpoint = path
        return path

    def finish(self) -> dict[str, Any]:
        """Final evaluation, checkpoint, model export (with a model card), curve PNG and a printed summary.

        Returns:
            The summary (also printed): steps, time, final loss, metrics and where each output went.
        """
        if self.cfg.eval.at_end and self._has_eval():
            self.evaluate()
        self.save_checkpoint()
        if self.cfg.output.save_model:
            self.model_dir = self._export_model()
        curve = None
        if self.is_main and self.cfg.output.plot:
            curve = plot_curves(self.out_dir / METRICS_FILE, self.out_dir / CURVE_FILE)
        summary = {
            "steps": self.state.step,
            "epochs": round(self.state.epoch + self.state.batches_in_epoch / self.batches_per_epoch, 3),
            "time_s": round(self.state.elapsed_s, 1),
            "final_loss": self.state.last_loss,
            "metrics": self.last_eval,
            "model": str(self.model_dir) if self.model_dir else None,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "metrics_file": str(self.out_dir / METRICS_FILE),
            "curve": str(curve) if curve else None,
        }
        self._print_summary(summary)
        return summary

    def _export_model(self) -> Path | None:
        """``save_pretrained`` into ``<output>/model`` with a model card: base, data, loss, hyperparameters,
        final metrics. Under FSDP the full weights are gathered into a fresh CPU copy on rank 0 first."""
        out = self.out_dir / "model"
        card = {
            "base_model": self.cfg.model.path,
            "data": list(self.cfg.data.train),
            "loss": self.step.card(self.cfg),
            "hyperparameters": {
                "steps": self.state.step,
                "global_batch_size": self.global_batch_size,
                "per_device_batch_size": self.cfg.train.batch_size,
                "world_size": self.world_size,
                "grad_accum_steps": self.cfg.train.grad_accum_steps,
                "selector": self.cfg.data.selector,
                "collator": self.cfg.data.collator or "the model's own",
                "optim": self.cfg.to_dict()["optim"],
                "precision": "bf16" if self.use_bf16 else "fp32",
                "seed": self.cfg.seed,
            },
            "metrics": {**self.last_eval, "final_train_loss": self.state.last_loss},
        }
        model = self.raw_model
        if self.cfg.train.fsdp:
            full = trainable_state(self.model, None)
            if not self.is_main:
                dist.barrier()
                return out
            model = self._fresh_cpu_model()
            model.load_state_dict(full, strict=False)
        if self.is_main:
            if hasattr(getattr(model, "config", None), "matryoshka_dims"):
                # the folder records the dims this run trained (none: a loaded folder's earlier dims no
                # longer hold)
                model.config.matryoshka_dims = list(self.cfg.loss.matryoshka_dims)
            _save_atomically(model, out, card)
            self.log.print(f"saved model {out}")
        if self.world_size > 1:
            dist.barrier()
        return out

    def _fresh_cpu_model(self) -> nn.Module:
        return locate(self.cfg.model._target_, "model._target_")(
            self.cfg.model.path, **model_loader_kwargs(self.cfg)
        )

    def cleanup(self) -> None:
        """Close the logger and leave the process group."""
        if hasattr(self, "log"):
            self.log.close()
        self.outdir.release()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------------------------------------

    @property
    def global_batch_size(self) -> int:
        """Queries per optimizer step over all devices: per-device batch x world size x accumulation."""
        return self.cfg.train.batch_size * self.world_size * self.cfg.train.grad_accum_steps

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation window."""
        if not last and isinstance(self.model, nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        if not last and self.cfg.train.fsdp:
            self.model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        if self.cfg.train.fsdp:
            self.model.set_requires_gradient_sync(True)
        return contextlib.nullcontext()

    def _say(self, text: str) -> None:
        if self.is_main:
            log = getattr(self, "log", None)
            log.print(text) if log is not None else print(text, flush=True)

    def _print_plan(self) -> None:
        cfg = self.cfg.train
        n_train, n_all = self.param_counts
        mode = "FSDP2" if cfg.fsdp else ("DDP" if self.world_size > 1 else "single process")
        self._say(
            f"densetune train: {self.cfg.model.path} on {self.device} ({mode}, {self.world_size} process(es), "
            f"{'bf16 autocast' if self.use_bf16 else 'fp32'}); trainable parameters {n_train:,} of {n_all:,}"
        )
        self._say(str(self.precision))
        self._say(
            f"batch: {cfg.batch_size} queries per device x {self.world_size} device(s) x {cfg.grad_accum_steps} "
            f"accumulation = {self.global_batch_size} queries per optimizer step (global batch), each with "
            f"{self.selector.group_size} documents"
        )
        room = f" of {self.device_memory / GIB:.1f} GiB" if self.device_memory else ""
        self._say(f"memory: estimated peak {self.memory.describe()} per device{room}")
        self._say(
            f"data: {len(self.dataset):,} groups, {self.batches_per_epoch} batches per epoch per device, "
            f"{self.steps_per_epoch} steps per epoch; {self.total_steps} steps in total "
            f"(warm-up {warmup_steps(self.cfg.optim, self.total_steps)}, {self.cfg.optim.scheduler} schedule)"
        )
        if self.unused:
            self._say(
                f"frozen {len(self.unused)} parameter(s) the embeddings never use: {', '.join(self.unused[:4])}"
            )
        self._say(f"output: {self.out_dir}")
        if self.log.tensorboard_note:  # nothing to act on: shown with densetune -v
            logging.getLogger("densetune.train").info(self.log.tensorboard_note)

    def _print_summary(self, s: dict[str, Any]) -> None:
        loss = f"{s['final_loss']:.4f}" if s["final_loss"] is not None else "n/a"
        lines = [
            "",
            "training finished",
            f"  steps        {s['steps']} ({s['epochs']} epochs) in {s['time_s']:.1f} s",
            f"  final loss   {loss}",
        ]
        if s["metrics"]:
            lines.append("  metrics      " + "  ".join(f"{k} {v:.4f}" for k, v in s["metrics"].items()))
        for key, label in (
            ("model", "model"),
            ("checkpoint", "checkpoint"),
            ("metrics_file", "log"),
            ("curve", "curve"),
        ):
            if s[key]:
                lines.append(f"  {label:<12} {s[key]}")
        for line in lines:
            self._say(line)


# ----------------------------------------------------------------------------------------------------
# Module helpers (no state of their own)
# ----------------------------------------------------------------------------------------------------


class NonFiniteError(DensetuneError):
    """A training step had a non-finite loss or gradient norm (``train.on_nonfinite=stop``)."""


class _NonFiniteWatch:
    """Remembers the first step with a non-finite loss or gradient norm, on the device: no host sync per
    step. :meth:`check` (at log and save time) reads it once, with the query ids of that step's batch.

    Args:
        device: where losses and norms live.
        step: the step count at the start (steps are counted on the device from there).
    """

    NONE = 2**62

    def __init__(self, device: torch.device, step: int):
        self.counter = torch.tensor(step, dtype=torch.int64, device=device)
        self.first = torch.tensor(self.NONE, dtype=torch.int64, device=device)
        self.none = self.first.clone()
        self.ids: dict[int, list[str]] = {}  # step -> its batch's query ids, since the last check

    def note(self, step: int, query_ids: list[str]) -> None:
        self.ids.setdefault(step, []).extend(query_ids)

    def observe(self, loss: torch.Tensor, norm: torch.Tensor) -> None:
        self.counter += 1
        bad = ~(torch.isfinite(torch.as_tensor(loss)) & torch.isfinite(norm))
        self.first = torch.minimum(self.first, torch.where(bad, self.counter, self.none))

    def check(self, world_size: int) -> tuple[int, list[str]] | None:
        """(first bad step, its query ids) on any rank since the last check, or None; then forget them."""
        first = self.first.clone()
        if world_size > 1:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        step = int(first)  # the host sync, once per check
        ids, self.ids = self.ids, {}
        self.first = self.none.clone()
        if step == self.NONE:
            return None
        return step, ids.get(step, [])


class TypedCollate:
    """The collate function of the loaders: groups -> a typed batch carrying the groups' query ids.

    A collator with ``collate_groups`` (densetune's own) makes the :class:`~densetune.data.batch.Batch` /
    :class:`~densetune.data.batch.PairBatch` directly; any other (a seed's, returning its dict) is read back
    by :func:`~densetune.data.batch.typed_batch`.
    """

    def __init__(self, collate: Any):
        self.collate = collate

    def __call__(self, groups: list[Any]) -> Batch | PairBatch:
        make = getattr(self.collate, "collate_groups", None)
        batch = make(groups) if make is not None else typed_batch(self.collate(groups))
        batch.query_ids = [str(getattr(g, "query_id", "")) for g in groups]
        return batch


def _show_ids(ids: list[str], n: int = 8) -> str:
    shown = ", ".join(ids[:n]) or "unknown"
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")


def _refuse_nonfinite_weights(tensors: dict[str, torch.Tensor], step: int) -> None:
    """Never save (or then export) weights holding NaN or inf."""
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteError(
            f"step {step}: {len(bad)} weight tensor(s) are not finite ({', '.join(bad[:3])}); nothing saved. "
            "Lower optim.lr or check the data's teacher scores with densetune validate"
        )


class _Window:
    """Sums over the steps since the last log line."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.loss: Any = 0.0
        self.grad_norm: Any = 0.0
        self.lr = 0.0
        self.steps = 0
        self.samples = 0
        self.tokens = 0

    def add(self, samples: int, tokens: int) -> None:
        """Count a batch's queries and real (non-padding) tokens (read on CPU, before the copy)."""
        self.samples += samples
        self.tokens += tokens


def _load_model(load: Any, path: str, kwargs: dict[str, Any]) -> nn.Module:
    """``load(path, **kwargs)``, with a missing folder or an unknown hub name as one ``model.path`` line.

    A path no hub name could be (absolute, ``./``, ``../``, ``~``, deeper than ``org/name``) must exist;
    anything else that transformers cannot find raises its OSError, reported by its first line.
    """
    local = os.path.isabs(path) or path.startswith((".", "~")) or len(Path(path).parts) > 2
    if local and not Path(path).expanduser().exists():
        raise ConfigError("model.path", f"{path}: no such directory; expected a model folder or hub name")
    try:
        return load(path, **kwargs)
    except OSError as err:
        if Path(path).exists():
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            "model.path", f"{path} is neither a local folder nor a model available offline: {first}"
        ) from None


def _save_atomically(model: nn.Module, out: Path, card: dict[str, Any]) -> None:
    """``save_pretrained`` into a temporary folder beside ``out``, then rename it to ``out``: a kill or a
    full disk during the export leaves the previous ``out`` (or none), never a half-written one."""
    import shutil

    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp), model_card=card)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            raise DensetuneError(
                f"disk full exporting the model to {out}: the partial export was removed; the last checkpoint "
                "holds the trained weights: free some space and rerun with resume=auto to export it"
            ) from None
        raise
    if out.exists():
        old = out.parent / f".tmp-old-{out.name}-{os.getpid()}"
        os.replace(out, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, out)


def loader_workers(configured: int | None, device: torch.device) -> int:
    """``data.num_workers``, with null resolved: 0 on a CPU (tokenising would take the model's cores); on CUDA
    one worker per core this rank can spare (cores / processes on the node, less the training process), at
    most 8: a GPU step consumes batches faster than one process tokenises them."""
    if configured is not None:
        return configured
    if device.type != "cuda":
        return 0
    per_rank = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, per_rank - 1))


def saved_loader_workers(state: dict[str, Any]) -> int:
    """The worker count a StatefulDataLoader state was saved with (its multi-process form keeps a snapshot)."""
    snapshot = state.get("_snapshot")
    return int(snapshot["_main_snapshot"]["_num_workers"]) if snapshot else 0


def _cap_batch(cfg: RecipeConfig) -> None:
    """``DENSETUNE_MAX_BATCH=N``: at most N queries per device, per-task sizes (``batch_size_by_task``) too."""
    cap = env_cap(MAX_BATCH)
    if cap is None:
        return
    cut = []
    if cap < cfg.train.batch_size:
        cut.append(f"train.batch_size {cfg.train.batch_size} -> {cap}")
        cfg.train.batch_size = cap
    by_task = cfg.data.sampler.get("batch_size_by_task") or {}
    for task, size in by_task.items():
        if isinstance(size, int) and cap < size:
            cut.append(f"data.sampler.batch_size_by_task.{task} {size} -> {cap}")
            by_task[task] = cap
    if cut:
        print(f"{MAX_BATCH}={cap}: {', '.join(cut)}", flush=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _sampler_data_args(node: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """The per-example data a batch sampler requires, by the parameter names the densetune samplers use.

    ``num_examples`` (RandomBatchSampler), ``lengths`` (LengthBucketBatchSampler), ``keys`` (document keys,
    NoDuplicatesBatchSampler), ``tasks`` (SameTaskBatchSampler). Only parameters without a default are
    filled, so an optional ``keys`` of SameTaskBatchSampler stays off unless the sampler requires it.
    """
    import inspect

    params = inspect.signature(locate(node["_target_"], "data.sampler._target_")).parameters
    makers = {
        "num_examples": lambda: len(dataset),
        "lengths": lambda: dataset.lengths(),
        "keys": lambda: dataset.doc_keys(),
        "tasks": lambda: dataset.tasks(),
    }
    return {
        name: make()
        for name, make in makers.items()
        if name in params and params[name].default is inspect.Parameter.empty and name not in node
    }


def _freeze_unused(model: nn.Module, probe: torch.Tensor) -> list[str]:
    """Freeze trainable parameters that the model's forward never reaches (a bi-encoder backbone's unused
    pooler head, say), found by back-propagating ``probe``, one tiny forward's output.

    They could never learn, and DDP waits forever for their gradients unless it searches the graph every
    step (``find_unused_parameters``); frozen, they also stay out of the optimizer and the checkpoints.
    """
    probe.backward()
    unused = []
    for name, param in model.named_parameters():
        if param.requires_grad and param.grad is None:
            param.requires_grad_(False)
            unused.append(name)
        param.grad = None
    return unused
