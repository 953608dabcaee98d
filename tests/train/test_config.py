"""The recipe config: defaults, validation messages, overrides, saving, every shipped config; the optimizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from densetune.errors import ConfigError
from densetune.train.checks import check_components
from densetune.train.config import diff_configs, load_config, save_config
from densetune.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from densetune.train.schema import DEFAULT_COLLATOR, RecipeConfig

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name != "nemo_dataloader.yaml")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = "model: {path: /models/m}\ndata: {train: [a.jsonl]}\n"


def test_defaults_fill_every_section(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert isinstance(cfg, RecipeConfig)
    assert cfg.train.batch_size == 16 and cfg.train.grad_accum_steps == 1
    assert cfg.optim.lr == 2e-5 and cfg.optim.scheduler == "linear"
    assert cfg.data.collator == DEFAULT_COLLATOR
    assert cfg.loss.contrastive["temperature"] == 0.05 and cfg.loss.distillation is None
    assert cfg.seed == 42 and cfg.resume is None


def test_overrides_reach_keys_the_yaml_does_not_mention(tmp_path):
    cfg = load_config(
        write(tmp_path, MINIMAL),
        [
            "train.max_steps=10",
            "optim.lr=3e-5",
            "data.collator.q_max_len=32",
            "resume=auto",
            "data.train=b.jsonl",
        ],
    )
    assert cfg.train.max_steps == 10 and cfg.optim.lr == 3e-5 and cfg.resume == "auto"
    assert cfg.data.collator["q_max_len"] == 32
    assert cfg.data.collator["_target_"] == DEFAULT_COLLATOR["_target_"]  # merged, not replaced
    assert cfg.data.train == ["b.jsonl"]  # a single path becomes a list


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL + "train: {batch_sise: 8}\n"))
    msg = str(err.value)
    assert "train.batch_sise" in msg and "train.batch_size" in msg and "train.grad_accum_steps" in msg
    with pytest.raises(ConfigError, match="no such key"):
        load_config(write(tmp_path, MINIMAL), ["train.nope=1"])


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("train.batch_size=abc", "train.batch_size", "an integer"),
        ("train.batch_size=0", "train.batch_size", ">= 1"),
        ("optim.lr=fast", "optim.lr", "a number"),
        ("optim.scheduler=step", "optim.scheduler", "constant, linear, cosine"),
        ("train.precision=fp16", "train.precision", "auto, fp32, bf16"),
        ("train.fsdp=maybe", "train.fsdp", "true/false"),
        ("optim.betas=[0.9]", "optim.betas", "two numbers"),
        ("data.sampler.shuffle=true", "data.sampler", None),
        ("resume=/no/such/dir", "resume", "not a directory"),
    ],
)
def test_bad_values_name_the_key_and_the_expectation(tmp_path, override, key, expected):
    if expected is None:  # a merged component key is fine for the schema; checked against the signature later
        load_config(write(tmp_path, MINIMAL), ["+" + override])
        return
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL), [override])
    assert err.value.key == key and expected in str(err.value)


def test_required_keys_and_combinations(tmp_path):
    with pytest.raises(ConfigError, match="model.path"):
        load_config(write(tmp_path, "data: {train: [a]}\n"))
    with pytest.raises(ConfigError, match="data.train"):
        load_config(write(tmp_path, "model: {path: m}\n"))
    with pytest.raises(ConfigError, match="enable at least one"):
        load_config(write(tmp_path, MINIMAL), ["loss.contrastive=null"])
    with pytest.raises(ConfigError, match="grad_cache"):
        load_config(write(tmp_path, MINIMAL), ["train.fsdp=true", "train.grad_cache_chunk_size=8"])


def test_retargeted_component_replaces_the_default_node(tmp_path):
    # one data: section (a second one is a duplicate key, refused)
    text = (
        "model: {path: /models/m}\ndata:\n  train: [a]\n  sampler: {_target_: my.Sampler, drop_last: true}\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.data.sampler == {"_target_": "my.Sampler", "drop_last": True}
    problems = check_components(cfg)
    assert any("data.sampler._target_" in p and "my.Sampler" in p for p in problems)


def test_distillation_node_gets_its_default_target(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "loss: {distillation: {}, distillation_weight: 0.5}\n"))
    assert cfg.loss.distillation["_target_"] == "densetune.losses.DistillationLoss"
    assert cfg.loss.distillation_weight == 0.5


def test_live_arguments_cannot_be_set_in_yaml(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["+data.collator.tokenizer=x"])
    assert any("tokenizer is set by the recipe" in p for p in check_components(cfg))


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["optim.lr=1e-4", "train.max_steps=7"])
    save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(tmp_path / "out" / "config.yaml")
    assert again == cfg
    assert diff_configs(cfg.to_dict(), again.to_dict()) == {}
    changed = load_config(tmp_path / "out" / "config.yaml", ["optim.lr=2e-4"])
    assert diff_configs(cfg.to_dict(), changed.to_dict()) == {"optim.lr": (1e-4, 2e-4)}


def test_interpolations_resolve_in_yaml_and_overrides_and_are_saved_resolved(tmp_path, monkeypatch):
    """OmegaConf ``${...}`` in a recipe and on the command line, resolved after every merge; config.yaml
    (what resume reads) holds the values, so a saved run never depends on the environment it ran in."""
    monkeypatch.setenv("DENSETUNE_TEST_RUNS", str(tmp_path / "runs"))
    text = MINIMAL + (
        "train:\n  batch_size: 8\n"
        "eval:\n  batch_size: ${train.batch_size}\n"
        "output:\n  dir: ${oc.env:DENSETUNE_TEST_RUNS}/seed${seed}\n"
    )
    cfg = load_config(write(tmp_path, text), ["seed=7", "data.collator.p_max_len=${data.collator.q_max_len}"])
    assert cfg.eval.batch_size == 8 and cfg.output.dir == f"{tmp_path}/runs/seed7"
    assert cfg.data.collator["p_max_len"] == 64  # inside a component node too
    save_config(cfg, tmp_path / "saved" / "config.yaml")
    saved = (tmp_path / "saved" / "config.yaml").read_text(encoding="utf-8")
    assert "${" not in saved and f"dir: {tmp_path}/runs/seed7" in saved
    assert load_config(tmp_path / "saved" / "config.yaml") == cfg
    # an interpolation is type-checked once resolved, and a bad one names the key that holds it
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL), ["eval.batch_size=${train.batch_sise}"])
    assert err.value.key == "eval.batch_size" and "train.batch_sise" in str(err.value)
    assert "\n" not in str(err.value) and "full_key" not in str(err.value)  # OmegaConf's key/type lines
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL), ["train.batch_size=${model.path}"])
    assert err.value.key == "train.batch_size" and "/models/m" in str(err.value)


def test_typed_lists_check_each_item_and_null_nodes_take_keys_with_plus(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, MINIMAL + "optim:\n  betas: [0.9, high]\n"))
    assert err.value.key == "optim.betas[1]" and "expected a number; got 'high'" in str(err.value)
    with pytest.raises(ConfigError, match=r"model\.lora: is null; .* \+model\.lora\.r=") as err:
        load_config(write(tmp_path, MINIMAL), ["model.lora.r=8"])
    cfg = load_config(write(tmp_path, MINIMAL), ["+model.lora.r=8", "+model.lora.target_modules=all-linear"])
    assert cfg.model.lora == {"r": 8, "target_modules": "all-linear"}  # a string stays one in a plain mapping
    with pytest.raises(ConfigError, match="unknown key; valid keys here: train.batch_size"):
        load_config(write(tmp_path, MINIMAL), ["+train.nope=1"])  # a schema section takes no new keys
    cfg = load_config(write(tmp_path, MINIMAL + "eval:\n"))  # an empty section is its defaults
    assert cfg.eval.batch_size == 64


def test_shipped_recipes_exist():
    names = {p.name for p in RECIPES}
    assert len(RECIPES) >= 5, names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    """torchtune habit: each config in configs/ loads into the dataclasses and every component node
    matches its target's signature (as the recipe will call it)."""
    cfg = load_config(path)
    assert check_components(cfg) == []


# ---------------------------------------------------------------------------------------------------- optim


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_no_weight_decay_on_biases_and_norms_and_frozen_left_out():
    model = _Tiny()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["params"] == [model.lin.weight]
    assert {id(p) for p in no_decay["params"]} == {
        id(model.lin.bias),
        id(model.norm.weight),
        id(model.norm.bias),
    }


def test_schedule_warmup_then_linear_or_cosine_decay(tmp_path):
    f = lambda step, kind: lr_factor(step, total_steps=10, warmup=2, kind=kind, min_ratio=0.0)  # noqa: E731
    assert [round(f(s, "linear"), 4) for s in range(4)] == [0.3333, 0.6667, 1.0, 0.875]
    assert f(10, "linear") == 0.0 and f(10, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert f(6, "cosine") == pytest.approx(0.5)
    assert f(9, "constant") == 1.0
    cfg = load_config(write(tmp_path, MINIMAL), ["optim.warmup_steps=2", "optim.lr=1.0"])
    model = _Tiny()
    opt = build_optimizer(model, cfg.optim, torch.device("cpu"))
    sched = build_scheduler(opt, cfg.optim, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and lrs[-1] == pytest.approx(0.125)


def test_densetune_components_default_to_what_the_recipe_trains():
    """One source of defaults: a GroupSelector / ContrastiveLoss built in Python with no arguments is the
    one a recipe that leaves those keys out trains with."""
    from densetune.data.groups import GroupSelector
    from densetune.losses import ContrastiveLoss
    from densetune.train.config import from_dict, merge_defaults

    cfg = from_dict(merge_defaults({"model": {"path": "m"}, "data": {"train": ["x.jsonl"]}}))
    selector, loss = GroupSelector(), ContrastiveLoss()
    assert {k: getattr(selector, k) for k in ("n_passages", "positive", "negative")} == {
        k: cfg.data.selector[k] for k in ("n_passages", "positive", "negative")
    }
    assert cfg.data.selector["n_passages"] == 4
    for key in ("temperature", "in_batch_negatives", "mask_false_negatives", "cross_device"):
        assert getattr(loss, key) == cfg.loss.contrastive[key], key
    assert (loss.temperature, loss.cross_device) == (0.05, True)


def test_cpu_adamw_is_fused_by_default_and_steps_like_the_loop_version(tmp_path):
    """The default CPU optimizer uses torch's fused kernel (the per-tensor loop cost ~10x more time per step on
    MiniLM, docs/BENCHMARKS.md); it computes the same update, and ``optim.fused=false`` still opts out."""
    cfg = load_config(write(tmp_path, MINIMAL), ["optim.lr=0.01"])
    models = {name: _Tiny() for name in ("default", "loop")}
    models["loop"].load_state_dict(models["default"].state_dict())
    fused = build_optimizer(models["default"], cfg.optim, torch.device("cpu"))
    loop_cfg = load_config(write(tmp_path, MINIMAL), ["optim.lr=0.01", "optim.fused=false"])
    loop = build_optimizer(models["loop"], loop_cfg.optim, torch.device("cpu"))
    assert fused.defaults["fused"] is True and not loop.defaults["fused"]
    x = torch.randn(8, 4)
    for _ in range(3):
        for model, opt in ((models["default"], fused), (models["loop"], loop)):
            model.norm(model.lin(x)).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(models["default"].parameters(), models["loop"].parameters()):
        torch.testing.assert_close(a, b)
