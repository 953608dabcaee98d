"""densetune/config.py: YAML files that are not UTF-8 or repeat a key are one-line errors, from the CLI too;
overrides and ``_target_`` nodes of a plain config (no schema)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from densetune.cli import main as cli
from densetune.config import apply_overrides, instantiate, load_yaml
from densetune.errors import ConfigError

RECIPE = "model:\n  path: some/model\noptim:\n  lr: 2e-5\n"


@pytest.mark.parametrize(
    "data,match",
    [
        (RECIPE.encode("utf-16"), r"recipe\.yaml:1: UTF-16-encoded; expected UTF-8 text"),
        (RECIPE.encode() + b"# caf\xe9\n", r"recipe\.yaml:5: not valid UTF-8 \(byte 0xe9\)"),
        (
            RECIPE.encode() + b"  lr: 1e-4\n",
            r"recipe\.yaml:5: invalid YAML: duplicate key 'lr' \(first on line 4\)",
        ),
        (b"a: 1\na: 2\n", r"recipe\.yaml:2: invalid YAML: duplicate key 'a'"),
    ],
)
def test_bad_yaml_files_are_one_line_errors(tmp_path, capsys, data, match):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=match):
        load_yaml(path)
    assert cli(["train", str(path), "--print-config"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: config: ") and len(err.strip().splitlines()) == 1


def test_merge_keys_may_be_overridden_and_a_bom_is_accepted(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("\ufeffbase: &b {lr: 1, wd: 0}\nrun:\n  <<: *b\n  lr: 2\n", encoding="utf-8")
    assert load_yaml(path) == {"base": {"lr": 1, "wd": 0}, "run": {"lr": 2, "wd": 0}}


def test_plain_config_overrides_and_interpolations_reach_instantiate(tmp_path):
    path = tmp_path / "loader.yaml"
    path.write_text(
        "batch: 4\nnode:\n  _target_: densetune.config.signature_defaults\n  path: ${callable}\n"
        "  names: [a]\ncallable: none\n",
        encoding="utf-8",
    )
    plain = apply_overrides(load_yaml(path), ["callable=densetune.config.closest_keys", "+node.extra=1"])
    assert plain["node"]["path"] == "${callable}" and plain["node"]["extra"] == 1  # a plain dict back
    with pytest.raises(
        ConfigError, match=r"config: node: signature_defaults does not accept extra; accepted: path, names"
    ):
        instantiate(OmegaConf.create(plain).node, "node")
    del plain["node"]["extra"]
    plain["node"]["names"] = ["prefix"]
    # resolved from the root of the config the node belongs to
    assert instantiate(OmegaConf.create(plain).node, "node") == {"prefix": ""}
    with pytest.raises(ConfigError, match=r"no such key; did you mean batch\?"):
        apply_overrides(load_yaml(path), ["bacth=2"])
