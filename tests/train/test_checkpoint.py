"""Checkpoints: atomic writes, finding the last complete one, pruning, the sidecar and RNG round trips."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from densetune.errors import ConfigError
from densetune.train import checkpoint as ckpt


def _save(root, step, **state):
    weights = {"w": torch.full((2, 3), float(step)), "b": torch.arange(3.0)}
    optim = {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    trainer = {
        ckpt.SCHEDULER_KEY: {"last_epoch": step},
        ckpt.DATALOADER_KEY: [None],
        ckpt.RNG_KEY: [ckpt.capture_rng()],
    }
    return ckpt.save_checkpoint(
        root, ckpt.ResumeState(step=step, **state), weights, optim, trainer, "seed: 1\n"
    )


def test_save_then_load_round_trips_every_part(tmp_path):
    path = _save(tmp_path, 7, epoch=1, batches_in_epoch=3, seed=5, total_steps=20)
    assert path.name == "step_00000007"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [ckpt.MODEL_FILE, ckpt.OPTIMIZER_FILE, ckpt.TRAINER_FILE, ckpt.STATE_FILE, ckpt.CONFIG_FILE]
    )
    sidecar = json.loads((path / ckpt.STATE_FILE).read_text())
    assert sidecar["step"] == 7 and sidecar["epoch"] == 1 and sidecar["batches_in_epoch"] == 3
    state, weights, optim, trainer = ckpt.load_checkpoint(path)
    assert set(state.files) == {ckpt.MODEL_FILE, ckpt.OPTIMIZER_FILE, ckpt.TRAINER_FILE, ckpt.CONFIG_FILE}
    assert state.files[ckpt.MODEL_FILE]["size"] == (path / ckpt.MODEL_FILE).stat().st_size
    state.files = {}
    assert state == ckpt.ResumeState(step=7, epoch=1, batches_in_epoch=3, seed=5, total_steps=20)
    assert torch.equal(weights["w"], torch.full((2, 3), 7.0))
    assert torch.equal(optim["state"][0]["exp_avg"], torch.ones(2))
    assert trainer[ckpt.SCHEDULER_KEY] == {"last_epoch": 7}


def test_tied_weights_are_saved(tmp_path):
    shared = torch.randn(4, 2)
    state = ckpt.ResumeState(step=1)
    path = ckpt.save_checkpoint(tmp_path, state, {"a": shared, "b": shared}, {}, {}, "")
    _, weights, _, _ = ckpt.load_checkpoint(path)
    assert torch.equal(weights["a"], weights["b"])


def test_incomplete_saves_are_never_resumed_from_and_get_cleaned(tmp_path):
    _save(tmp_path, 2)
    _save(tmp_path, 4)
    # A run killed while writing step 6 leaves a temp dir; one killed between files leaves no sidecar.
    (tmp_path / ".tmp-step_00000006-123").mkdir()
    (tmp_path / "step_00000008").mkdir()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000004"
    assert ckpt.resolve_resume("auto", tmp_path).name == "step_00000004"
    ckpt.prune_checkpoints(tmp_path, keep=5)
    assert not (tmp_path / ".tmp-step_00000006-123").exists()


def test_keep_last_k(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step)
    deleted = ckpt.prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in deleted) == ["step_00000001", "step_00000002"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]


def test_pruning_keeps_the_checkpoint_just_written_and_drops_an_abandoned_future(tmp_path):
    """A run resumed from step 2 with an older step 80 beside it: its new step 4 must survive pruning (it
    used to be pruned as soon as written, step 80 counting as newest) and step 80 must go, so resume=auto
    can never pick it."""
    for step in (2, 80):
        _save(tmp_path, step)
    current = _save(tmp_path, 4)
    deleted = ckpt.prune_checkpoints(tmp_path, keep=2, current=current)
    assert [p.name for p in deleted] == ["step_00000080"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004"]


def test_checkpoint_problem_names_the_damaged_file(tmp_path):
    path = _save(tmp_path, 5)
    assert ckpt.checkpoint_problem(path) is None
    (path / ckpt.TRAINER_FILE).write_bytes((path / ckpt.TRAINER_FILE).read_bytes()[:-10])
    assert ckpt.checkpoint_problem(path).startswith("trainer.pt is ")
    other = _save(tmp_path, 6)
    (other / ckpt.CONFIG_FILE).unlink()
    assert ckpt.checkpoint_problem(other) == "config.yaml is missing"
    with pytest.raises(ConfigError, match="damaged checkpoint: config.yaml is missing"):
        ckpt.resolve_resume(str(other), tmp_path)
    assert ckpt.resolve_resume("auto", tmp_path, say=lambda _: None) is None


def test_saving_the_same_step_again_replaces_it(tmp_path):
    _save(tmp_path, 3, epoch=0)
    _save(tmp_path, 3, epoch=9)
    assert ckpt.load_checkpoint(tmp_path / "step_00000003")[0].epoch == 9
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000003"]


def test_resolve_resume(tmp_path):
    assert ckpt.resolve_resume(None, tmp_path) is None
    assert ckpt.resolve_resume("auto", tmp_path / "none") is None
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        ckpt.resolve_resume(str(tmp_path), tmp_path)
    path = _save(tmp_path, 1)
    assert ckpt.resolve_resume(str(path), tmp_path) == path


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    path = _save(tmp_path, 1)
    expected = (random.random(), np.random.randn(), torch.rand(3).tolist())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    rng = ckpt.load_checkpoint(path)[3][ckpt.RNG_KEY][0]
    ckpt.restore_rng(rng)
    assert (random.random(), np.random.randn(), torch.rand(3).tolist()) == expected


def test_sidecar_ignores_unknown_fields():
    text = json.dumps({"step": 3, "from_a_newer_version": 1})
    assert ckpt.ResumeState.from_json(text).step == 3
