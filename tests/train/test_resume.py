"""Exact resume: a run killed after a checkpoint and resumed ends with the weights of an uninterrupted run.

Tiny random BERT with dropout ON, random negatives re-drawn each epoch and a shuffled sampler, CPU fp32,
resumed mid-epoch (step 3 of 6 per epoch) and run across the epoch boundary to step 8: weights, optimizer,
schedule, data position and every RNG state must all come back for the weights to match.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import final_weights, make_inline_data, max_abs_diff, run_recipe, tiny_recipe, write_yaml

from densetune.errors import ConfigError
from densetune.train import checkpoint as ckpt
from densetune.train.config import load_config
from densetune.train.logging import read_metrics
from densetune.train.loop import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KILL_AT = 3  # mid-epoch: 24 groups / batch 4 = 6 batches per epoch
STEPS = 8  # crosses into the second epoch


def run(cfg_path: Path, overrides: list[str], kill_at: int | None = None) -> TrainRecipe:
    return run_recipe(load_config(cfg_path, overrides), kill_at=kill_at)


@pytest.fixture(scope="module")
def setup(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    data = make_inline_data(tmp / "train.jsonl", 24, n_negatives=5)
    cfg = tiny_recipe(tiny_bert, data, tmp / "unused", train={"max_steps": STEPS, "save_every": KILL_AT})
    return tmp, write_yaml(tmp / "cfg.yaml", cfg)


@pytest.fixture(scope="module")
def uninterrupted(setup):
    tmp, cfg = setup
    out = tmp / "uninterrupted"
    run(cfg, [f"output.dir={out}"])
    return final_weights(out)


def test_killed_and_resumed_run_matches_uninterrupted_run(setup, uninterrupted, capsys):
    tmp, cfg = setup
    out = tmp / "killed"
    killed = run(cfg, [f"output.dir={out}"], kill_at=KILL_AT)
    assert killed.state.step == KILL_AT
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000003"]
    state = ckpt.load_checkpoint(out / "checkpoints" / "step_00000003")[0]
    assert (state.epoch, state.batches_in_epoch) == (0, 3)  # really mid-epoch

    capsys.readouterr()
    resumed = run(cfg, [f"output.dir={out}", "resume=auto", "train.log_every=1"])
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "step_00000003" in printed
    assert "train.log_every: checkpoint had 2, config says 1 -> config wins" in printed
    assert resumed.state.step == STEPS and resumed.state.epoch == 1

    diff = max_abs_diff(final_weights(out), uninterrupted)
    assert diff < 1e-6, f"resumed weights differ from the uninterrupted run by {diff}"
    # The log reads as one run: steps after the checkpoint logged once.
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS


def test_the_check_is_sensitive_to_rng_restore(setup, uninterrupted, monkeypatch):
    """Negative control: resuming without the RNG states (dropout masks differ) must NOT match."""
    tmp, cfg = setup
    out = tmp / "no_rng"
    run(cfg, [f"output.dir={out}"], kill_at=KILL_AT)
    monkeypatch.setattr(ckpt, "restore_rng", lambda state: None)
    run(cfg, [f"output.dir={out}", "resume=auto"])
    assert max_abs_diff(final_weights(out), uninterrupted) > 1e-4


def test_resume_from_an_explicit_path_and_refusal_of_other_batch_sizes(setup):
    tmp, cfg = setup
    out = tmp / "explicit"
    run(cfg, [f"output.dir={out}", "train.max_steps=4", "train.save_every=2"])
    step2 = out / "checkpoints" / "step_00000002"
    assert step2.is_dir()
    with pytest.raises(ConfigError, match="batch_size"):
        TrainRecipe(load_config(cfg, [f"output.dir={out}", f"resume={step2}", "train.batch_size=2"])).setup()
    recipe = run(cfg, [f"output.dir={out}", f"resume={step2}", "train.max_steps=5"])
    assert recipe.state.step == 5


def test_a_run_loading_in_worker_processes_resumes_exactly_in_one_process(setup, uninterrupted):
    """data.num_workers changes where batches are collated, not which: killed with 2 DataLoader workers
    (what auto picks on a GPU machine) and resumed with none, the weights equal the uninterrupted run's."""
    tmp, cfg = setup
    out = tmp / "workers"
    run(cfg, [f"output.dir={out}", "data.num_workers=2"], kill_at=KILL_AT)
    run(cfg, [f"output.dir={out}", "resume=auto", "data.num_workers=0"])
    diff = max_abs_diff(final_weights(out), uninterrupted)
    assert diff < 1e-6, f"resumed weights differ from the uninterrupted run by {diff}"


def test_num_workers_auto_is_none_on_a_cpu_and_spare_cores_on_cuda(monkeypatch):
    import torch

    from densetune.train.loop import loader_workers

    assert loader_workers(None, torch.device("cpu")) == 0
    assert loader_workers(3, torch.device("cpu")) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert loader_workers(None, torch.device("cuda", 0)) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loader_workers(None, torch.device("cuda", 0)) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert loader_workers(None, torch.device("cuda", 0)) == 0
