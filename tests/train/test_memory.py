"""The memory estimate printed at start: close to the measured peak, and a refusal (with fixes) past the device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from train_helpers import make_inline_data, tiny_recipe, write_yaml

from densetune.errors import ConfigError
from densetune.train.config import load_config
from densetune.train.loop import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[2]


def test_a_batch_past_the_device_is_refused_with_the_figure_and_fixes(tmp_path, tiny_bert):
    train = make_inline_data(tmp_path / "train.jsonl", 8)
    cfg = tiny_recipe(tiny_bert, train, tmp_path / "out", train={"batch_size": 10**7})
    recipe = TrainRecipe(load_config(write_yaml(tmp_path / "r.yaml", cfg), []))
    with pytest.raises(ConfigError) as err:
        recipe.setup()
    message = str(err.value)
    assert "estimated peak memory" in message and "GiB" in message and "exceeds the device's" in message
    for fix in (
        "train.grad_cache_chunk_size=",
        "model.gradient_checkpointing=true",
        "LoRA",
        "train.batch_size",
    ):
        assert fix in message
    assert "train.ignore_memory_check=true" in message

    cfg["train"]["ignore_memory_check"] = True  # goes on anyway
    recipe = TrainRecipe(load_config(write_yaml(tmp_path / "r2.yaml", cfg), []))
    recipe.setup()
    recipe.cleanup()
    assert recipe.memory.total > recipe.device_memory


def test_estimate_is_printed_with_the_global_batch(tmp_path, tiny_bert, capsys):
    train = make_inline_data(tmp_path / "train.jsonl", 8)
    cfg = tiny_recipe(tiny_bert, train, tmp_path / "out", train={"batch_size": 4, "grad_accum_steps": 2})
    recipe = TrainRecipe(load_config(write_yaml(tmp_path / "r.yaml", cfg), []))
    recipe.setup()
    recipe.cleanup()
    out = capsys.readouterr().out
    batch_line = out.index("= 8 queries per optimizer step (global batch)")
    assert out.index("memory: estimated peak ") > batch_line
    assert recipe.memory.total > recipe.memory.weights > 0


_MEASURE = textwrap.dedent(
    """
    import json, resource, sys, torch
    torch.set_num_threads(2)
    from densetune.train.config import load_config
    from densetune.train.loop import TrainRecipe
    recipe = TrainRecipe(load_config(sys.argv[1], []))
    recipe.setup()
    recipe.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"estimate": recipe.memory.total, "peak": peak}))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kilobytes on Linux")
def test_estimate_is_close_to_the_measured_peak_of_minilm(tmp_path, minilm_path):
    train = tmp_path / "train.jsonl"
    long = " ".join(["protein binds the receptor in liver cells"] * 60)  # past 128 tokens: full length
    train.write_text(
        "".join(
            json.dumps({"query": f"q{i} {long}", "pos_doc": f"p{i} {long}", "neg_doc": [f"n{i} {long}"]})
            + "\n"
            for i in range(32)
        ),
        encoding="utf-8",
    )
    cfg = tiny_recipe(
        minilm_path,
        train,
        tmp_path / "out",
        data={"collator": {"q_max_len": 32, "p_max_len": 128, "pad_to_multiple_of": None}},
        train={"batch_size": 16, "max_steps": 1},
    )
    config = write_yaml(tmp_path / "r.yaml", cfg)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(config)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = result["estimate"] / result["peak"]
    print(f"estimate {result['estimate'] / 2**30:.2f} GiB, measured peak {result['peak'] / 2**30:.2f} GiB")
    assert 0.7 < ratio < 1.5, result


def test_environment_caps_steps_and_batch(tmp_path, tiny_bert, monkeypatch):
    """DENSETUNE_MAX_STEPS / DENSETUNE_MAX_BATCH (the docs test's smoke runs) cap any recipe."""
    train = make_inline_data(tmp_path / "train.jsonl", 16)
    cfg = tiny_recipe(tiny_bert, train, tmp_path / "out", train={"batch_size": 8, "max_steps": 5})
    config = write_yaml(tmp_path / "r.yaml", cfg)
    monkeypatch.setenv("DENSETUNE_MAX_STEPS", "2")
    monkeypatch.setenv("DENSETUNE_MAX_BATCH", "4")
    recipe = TrainRecipe(load_config(config, []))
    recipe.setup()
    recipe.train()
    recipe.cleanup()
    assert (recipe.cfg.train.batch_size, recipe.total_steps, recipe.state.step) == (4, 2, 2)
    monkeypatch.setenv("DENSETUNE_MAX_BATCH", "four")
    with pytest.raises(ConfigError, match="DENSETUNE_MAX_BATCH"):
        TrainRecipe(load_config(config, []))
