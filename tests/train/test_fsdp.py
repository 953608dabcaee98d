"""``torchrun --nproc_per_node=2 -m densetune train CONFIG train.fsdp=true`` on CPU: FSDP2 over gloo.

FSDP2 (``fully_shard``) runs on a CPU device mesh with the gloo backend, so the recipe's FSDP path is
tested here without a GPU, end to end through the CLI, on a tiny random BERT in fp32:

- two sharded ranks with gradient accumulation train the same weights as one process on the global
  batch (as DDP does: the samplers give rank r slice r of each global batch, cross-device negatives make
  the loss the global-batch loss; dropout is off and padding is to max_length so both compute the same
  numbers up to float summation order), and evaluate to the same dev / corpus metrics;
- a checkpoint saved mid-epoch under FSDP (right after an evaluation) and resumed under FSDP ends where
  the uninterrupted run ends;
- the exported model folder (gathered to rank 0) embeds texts exactly as the trained weights do.

One FSDP launch trains, evaluates, checkpoints and exports; a second resumes (process start-up dominates).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fsdp_helpers import logged, torchrun_train
from train_helpers import (
    final_weights,
    make_beir_dir,
    make_inline_data,
    max_abs_diff,
    tiny_recipe,
    write_yaml,
)

from densetune.errors import ConfigError
from densetune.models.biencoder import BiEncoder
from densetune.train import checkpoint as ckpt
from densetune.train.config import load_config
from densetune.train.loop import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 24 groups / (2 queries x 2 ranks) = 6 micro-batches per epoch = 3 steps of 2 accumulated micro-batches:
# the checkpoint at step 2 is mid-epoch and the resumed run crosses into the next epoch.
SAVE_STEP, MAX_STEPS = 2, 4
TEXTS = ["protein cell gene", "virus vaccine trial dose", "sleep diet", "heart blood liver immune signal"]


def recipe(model: str, tmp: Path, out: Path, *, fsdp: bool, batch_size: int, resume=None) -> dict:
    """The run under test: accumulation, evaluation (dev groups + a BEIR corpus) and export included."""
    cfg = tiny_recipe(
        model,
        tmp / "train.jsonl",
        out,
        train={
            "batch_size": batch_size,
            "grad_accum_steps": 2,
            "max_steps": MAX_STEPS,
            "save_every": SAVE_STEP,
            "keep_last": 3,
            "log_every": 1,
            "fsdp": fsdp,
        },
        optim={"lr": 1e-3, "warmup_steps": 1},
        eval={
            "dev": [str(tmp / "dev.jsonl")],
            "beir_dir": str(tmp / "beir"),
            "every": SAVE_STEP,
            "at_end": True,
        },
        output={"dir": str(out), "tensorboard": False, "plot": False, "save_model": resume is None},
    )
    cfg["data"]["collator"]["padding"] = "max_length"
    cfg["loss"]["contrastive"]["cross_device"] = True
    cfg["resume"] = resume
    return cfg


@pytest.fixture(scope="module")
def runs(tiny_bert_nodrop, tmp_path_factory) -> dict[str, Path]:
    """Output folders of the FSDP run (2 ranks), its resumption from step 2, and one process (batch 4)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    make_inline_data(tmp / "train.jsonl", 24)
    make_inline_data(tmp / "dev.jsonl", 8, seed=1)
    make_beir_dir(tmp / "beir")
    out = {name: tmp / name for name in ("fsdp", "resumed", "single")}

    stdout = torchrun_train(
        write_yaml(tmp / "fsdp.yaml", recipe(tiny_bert_nodrop, tmp, out["fsdp"], fsdp=True, batch_size=2))
    )
    assert "FSDP2, 2 process(es)" in stdout
    assert "2 queries per device x 2 device(s) x 2 accumulation = 8 queries per optimizer step" in stdout
    assert stdout.count("training finished") == 1  # only rank 0 prints and writes

    checkpoint = str(out["fsdp"] / "checkpoints" / f"step_{SAVE_STEP:08d}")
    resumed = recipe(tiny_bert_nodrop, tmp, out["resumed"], fsdp=True, batch_size=2, resume=checkpoint)
    assert f"resuming from {checkpoint} at step {SAVE_STEP}" in torchrun_train(
        write_yaml(tmp / "resumed.yaml", resumed)
    )

    single = recipe(tiny_bert_nodrop, tmp, out["single"], fsdp=False, batch_size=4)
    trainer = TrainRecipe(load_config(write_yaml(tmp / "single.yaml", single)))
    try:
        trainer.setup()
        trainer.train()
        trainer.finish()
    finally:
        trainer.cleanup()
    return out


@pytest.mark.slow
def test_fsdp_trains_and_evaluates_like_one_process(runs):
    diff = max_abs_diff(final_weights(runs["fsdp"]), final_weights(runs["single"]))
    assert diff < 1e-5, f"2-rank FSDP and 1 process differ by {diff}"
    for step in range(1, MAX_STEPS + 1):
        fsdp, single = logged(runs["fsdp"], "train")[step], logged(runs["single"], "train")[step]
        assert fsdp["loss"] == pytest.approx(single["loss"], rel=1e-5), f"step {step}"
        assert fsdp["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-4), f"step {step}"
    evals = logged(runs["fsdp"], "eval")
    assert sorted(evals) == [SAVE_STEP, MAX_STEPS]
    for step, metrics in evals.items():
        reference = logged(runs["single"], "eval")[step]
        for key in ("dev_loss", "dev_mrr", "ndcg@10", "recall@100"):
            assert metrics[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-6), f"{key} at {step}"


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_exactly(runs):
    saved = ckpt.load_checkpoint(runs["fsdp"] / "checkpoints" / f"step_{SAVE_STEP:08d}")
    assert saved[0].world_size == 2 and saved[0].batches_in_epoch == 4  # mid-epoch
    assert len(saved[3][ckpt.DATALOADER_KEY]) == 2  # each rank's data position, one writer

    diff = max_abs_diff(final_weights(runs["resumed"]), final_weights(runs["fsdp"]))
    assert diff < 1e-6, f"resumed and uninterrupted FSDP runs differ by {diff}"
    resumed, uninterrupted = logged(runs["resumed"], "train"), logged(runs["fsdp"], "train")
    assert sorted(resumed) == list(range(SAVE_STEP + 1, MAX_STEPS + 1))
    for step, record in resumed.items():
        assert record["loss"] == pytest.approx(uninterrupted[step]["loss"], rel=1e-6), f"step {step}"


@pytest.mark.slow
def test_fsdp_export_embeds_like_the_trained_weights(runs, tiny_bert_nodrop):
    exported = BiEncoder.from_pretrained(runs["fsdp"] / "model")
    trained = BiEncoder.from_pretrained(tiny_bert_nodrop, pooling="mean", normalize=True)
    untrained = trained.encode_texts(TEXTS, is_query=True, max_length=16)
    missing, unexpected = trained.load_state_dict(final_weights(runs["fsdp"]), strict=False)
    assert not unexpected and all("pooler" in name for name in missing)  # every trained weight, in place

    for is_query, max_length in ((True, 16), (False, 32)):
        got = exported.encode_texts(TEXTS, is_query=is_query, max_length=max_length)
        want = trained.encode_texts(TEXTS, is_query=is_query, max_length=max_length)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert (exported.encode_texts(TEXTS, is_query=True, max_length=16) - untrained).abs().max() > 1e-3


def test_fsdp_needs_several_processes(tiny_bert_nodrop, tmp_path):
    cfg = recipe(tiny_bert_nodrop, tmp_path, tmp_path / "out", fsdp=True, batch_size=2)
    with pytest.raises(ConfigError, match="nproc_per_node") as err:
        TrainRecipe(load_config(write_yaml(tmp_path / "one.yaml", cfg)))
    assert err.value.key == "train.fsdp"
