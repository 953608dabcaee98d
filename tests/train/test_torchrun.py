"""``torchrun --nproc_per_node=2 -m densetune train`` on CPU (gloo): DDP equals one process on the same
global batch.

The samplers plan the same global batches on every rank and give rank r slice r, so two ranks with
``batch_size=2`` see exactly the batches one process sees with ``batch_size=4``. With cross-device
negatives every query scores every passage of the global batch, and the loss scales so DDP's gradient
average is the global-batch gradient; dropout is off and padding is to max_length so both runs compute the
same numbers up to float summation order (amplified a little by Adam's normalisation).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from train_helpers import final_weights, make_inline_data, max_abs_diff, tiny_recipe, write_yaml

from densetune.train import checkpoint as ckpt
from densetune.train.config import load_config
from densetune.train.loop import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def recipe(model: str, data, out, batch_size: int) -> dict:
    cfg = tiny_recipe(
        model,
        data,
        out,
        train={"batch_size": batch_size, "max_steps": 3, "log_every": 1, "save_every": 2},
        optim={"lr": 1e-4, "warmup_steps": 0},
        output={"dir": str(out), "tensorboard": False, "plot": False, "save_model": True},
    )
    cfg["data"]["collator"]["padding"] = "max_length"
    cfg["loss"]["contrastive"]["cross_device"] = True
    return cfg


@pytest.mark.slow
def test_two_cpu_ranks_equal_one_process(tiny_bert_nodrop, tmp_path):
    data = make_inline_data(tmp_path / "train.jsonl", 16)
    ddp_out, one_out = tmp_path / "ddp", tmp_path / "one"
    cfg = write_yaml(tmp_path / "ddp.yaml", recipe(tiny_bert_nodrop, data, ddp_out, batch_size=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, "-m", "densetune", "train", str(cfg)], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "DDP, 2 process(es)" in out
    assert "2 queries per device x 2 device(s) x 1 accumulation = 4 queries per optimizer step" in out
    assert out.count("training finished") == 1  # only rank 0 prints and writes

    # One model, one log, checkpoints only from rank 0.
    assert (ddp_out / "model").is_dir()
    assert [p.name for p in ddp_out.iterdir() if p.name.startswith("model")] == ["model"]
    assert [p.name for p in ckpt.list_checkpoints(ddp_out / "checkpoints")] == [
        "step_00000002",
        "step_00000003",
    ]
    state = ckpt.load_checkpoint(ddp_out / "checkpoints" / "step_00000003")
    assert state[0].world_size == 2 and len(state[3][ckpt.RNG_KEY]) == 2  # every rank's RNG, one writer

    single = TrainRecipe(
        load_config(write_yaml(tmp_path / "one.yaml", recipe(tiny_bert_nodrop, data, one_out, 4)))
    )
    try:
        single.setup()
        single.train()
        single.finish()
    finally:
        single.cleanup()
    diff = max_abs_diff(final_weights(ddp_out), final_weights(one_out))
    assert diff < 1e-5, f"2-rank DDP and 1 process differ by {diff}"
