"""densetune/config.py: YAML files that are not UTF-8 or repeat a key are one-line errors, from the CLI too."""

from __future__ import annotations

import pytest

from densetune.cli import main as cli
from densetune.config import load_yaml
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
