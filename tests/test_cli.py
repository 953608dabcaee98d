"""The command line as a new user meets it: help, examples, version, messages that name real fixes, quiet runs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from densetune.cli import COMMANDS, EXAMPLES, build_parser
from densetune.cli import main as cli_main
from densetune.errors import ConfigError
from densetune.train.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _help(*argv: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(list(argv))
    assert exit_info.value.code == 0


def test_top_help_opens_for_users(capsys):
    _help("--help")
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert description.startswith("densetune: fine-tune and evaluate retrieval models")
    assert "own module" not in out and "configure_parser" not in out
    assert out.rstrip().endswith("example:\n  densetune quickstart")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_help_ends_with_an_example_its_parser_accepts(command, capsys):
    _help(command, "--help")
    out = capsys.readouterr().out.rstrip()
    assert out.endswith(f"example:\n  {EXAMPLES[command]}")
    argv = shlex.split(EXAMPLES[command])
    assert argv[:2] == ["densetune", command]
    build_parser(command).parse_args(argv[1:])  # every flag of the example exists


def test_quickstart_flags_all_have_help():
    parser = build_parser("quickstart")
    sub = next(a for a in parser._actions if a.dest == "command").choices["quickstart"]
    undocumented = [a.option_strings for a in sub._actions if not a.help]
    assert undocumented == []


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--version"])
    assert exit_info.value.code == 0
    from densetune import __version__

    assert capsys.readouterr().out.strip() == f"densetune {__version__}"


def test_misspelt_override_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match=r"train\.max_step: no such key; did you mean train\.max_steps\?"):
        load_config(REPO / "configs" / "minilm_scifact.yaml", ["train.max_step=1"])
    with pytest.raises(ConfigError, match=r"did you mean data\.selector\.n_passages\?"):
        load_config(REPO / "configs" / "minilm_scifact.yaml", ["data.selector.n_pasages=1"])


def test_misspelt_yaml_key_names_the_closest_valid_key(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("optim:\n  learning_rate: 1.0e-5\n  lr_scheduler: linear\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"did you mean optim\.scheduler\?"):
        load_config(bad, [])


def test_reranker_config_error_names_flags_that_exist():
    cfg = REPO / "configs" / "minilm_reranker.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(cfg, ["eval.beir_dir=../shared/data/scifact"])
    message = str(err.value)
    assert "--save-run" not in message
    assert "--save-dir" in message
    commands = re.findall(r"`densetune (\w+) ([^`]*)`", message)
    assert [c for c, _ in commands] == ["search", "evaluate"]
    for command, rest in commands:  # each flag the message names exists on its command
        flags = {o for a in _subparser(command)._actions for o in a.option_strings}
        assert {w for w in rest.split() if w.startswith("--")} <= flags


def _subparser(command: str):
    parser = build_parser(command)
    return next(a for a in parser._actions if a.dest == "command").choices[command]


def _rerank_tiny(tmp_path: Path, model: str, *flags: str) -> str:
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True, exist_ok=True)
    (beir / "corpus.jsonl").write_text('{"_id":"d1","text":"a cell"}\n{"_id":"d2","text":"a gene"}\n')
    (beir / "queries.jsonl").write_text('{"_id":"q1","text":"cells"}\n')
    (beir / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    (tmp_path / "run.trec").write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0 x\n")
    argv = ["rerank", *flags, "--model", model, "--run", str(tmp_path / "run.trec"), "--data", str(beir)]
    argv += ["--split", "test", "--out", str(tmp_path / "out.trec"), "--device", "cpu", "--overwrite"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    for key in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(key, None)
    done = subprocess.run(
        [sys.executable, "-m", "densetune", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_runs_are_quiet_by_default_and_verbose_with_v(tmp_path, minilm_path):
    """A reranker from MiniLM (new head): transformers' loading bar and LOAD REPORT only with -v."""
    quiet = _rerank_tiny(tmp_path, minilm_path)
    assert "Loading weights" not in quiet and "LOAD REPORT" not in quiet
    assert "reranked the top" in quiet
    loud = _rerank_tiny(tmp_path, minilm_path, "-v")
    assert "LOAD REPORT" in loud
