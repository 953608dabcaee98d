"""One rule for outputs in every command (densetune/paths.py): an existing output is refused without
``--overwrite`` (one line naming the path and the flag, the file left as it was); with it, replaced."""

from __future__ import annotations

import json

import numpy as np
import pytest

from densetune.cli import main as cli
from densetune.data.trec import write_run
from densetune.retrieval.embeddings import write_embeddings

OLD = "old output\n"


@pytest.fixture
def inputs(tmp_path, beir_dir):
    """Real inputs for every command: a training file, embeddings, a run and qrels, a BEIR directory."""
    train = tmp_path / "train.jsonl"
    train.write_text(
        json.dumps({"query": "why do cats purr", "pos": ["cats purr"], "neg": ["dogs bark"]}) + "\n"
    )
    enc = tmp_path / "enc"
    rng = np.random.default_rng(0)
    write_embeddings(enc, "query", ["q1", "q2"], rng.standard_normal((2, 8)).astype(np.float32))
    write_embeddings(
        enc, "doc", [f"d{i}" for i in range(1, 11)], rng.standard_normal((10, 8)).astype(np.float32)
    )
    run = tmp_path / "run.trec"
    write_run({"q1": {"d1": 0.9, "d2": 0.5}, "q2": {"d3": 0.7}}, run)
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1\td1\t1\nq2\td3\t1\n")
    return {
        "TRAIN": train,
        "ENC": enc,
        "RUN": run,
        "QRELS": qrels,
        "BEIR": beir_dir,
        "MODEL": tmp_path / "nomodel",
    }


COMMANDS = {
    "convert": ["convert", "TRAIN", "OUT", "--to", "tevatron"],
    "search": ["search", "--queries", "ENC", "--corpus", "ENC", "--out", "OUT", "--top-k", "3"],
    "evaluate --out": ["evaluate", "--run", "RUN", "--qrels", "QRELS", "--out", "OUT"],
    "evaluate --save-dir": ["evaluate", "--model", "MODEL", "--data", "BEIR", "--save-dir", "OUTDIR"],
    "encode --queries": [
        "encode",
        "--model",
        "MODEL",
        "--queries",
        "BEIR",
        "--split",
        "train",
        "--out",
        "OUTDIR",
    ],
    "mine": ["mine", "--model", "MODEL", "--data", "BEIR", "--out", "OUT"],
    "score": ["score", "--model", "MODEL", "--data", "TRAIN", "--out", "OUT", "--no-progress"],
    "rerank": [
        "rerank",
        "--model",
        "MODEL",
        "--run",
        "RUN",
        "--data",
        "BEIR",
        "--out",
        "OUT",
        "--no-progress",
    ],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_existing_output_is_refused_without_overwrite(command, inputs, tmp_path, capsys):
    out = tmp_path / "out.file"
    out.write_text(OLD)
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    (outdir / "query.npy").write_text(OLD)
    subst = {**{k: str(v) for k, v in inputs.items()}, "OUT": str(out), "OUTDIR": str(outdir)}
    argv = [subst.get(a, a) for a in COMMANDS[command]]
    assert cli(argv) == 1
    err = capsys.readouterr().err.strip()
    target = outdir if "OUTDIR" in COMMANDS[command] else out
    if command == "encode --queries":
        target = outdir / "query.npy"
    assert (
        err.startswith(f"error: {target}: ") and "pass --overwrite" in err and len(err.splitlines()) == 1
    ), err
    assert out.read_text() == OLD and (outdir / "query.npy").read_text() == OLD


@pytest.mark.parametrize("command", ["convert", "search", "evaluate --out"])
def test_overwrite_replaces_the_output_atomically(command, inputs, tmp_path):
    out = tmp_path / "out.file"
    subst = {**{k: str(v) for k, v in inputs.items()}, "OUT": str(out)}
    argv = [subst.get(a, a) for a in COMMANDS[command]]
    assert cli(argv) == 0
    first = out.read_bytes()
    out.write_text(OLD)
    assert cli([*argv, "--overwrite"]) == 0
    assert out.read_bytes() == first and not list(tmp_path.glob("*.tmp"))


def test_an_empty_output_directory_is_not_refused(inputs, tmp_path):
    out = tmp_path / "fresh"
    out.mkdir()
    argv = [
        "evaluate",
        "--run",
        str(inputs["RUN"]),
        "--qrels",
        str(inputs["QRELS"]),
        "--out",
        str(out / "m.json"),
    ]
    assert cli(argv) == 0 and json.loads((out / "m.json").read_text())["queries"] == 2


def test_encode_queries_rerun_is_nothing_to_do_but_other_queries_are_refused(
    beir_dir, tmp_path, minilm_path, capsys
):
    from tiny_models import save_tiny_bert

    model = save_tiny_bert(tmp_path / "tiny", minilm_path)
    out = tmp_path / "emb"
    args = ["encode", "--model", model, "--queries", str(beir_dir), "--split", "test", "--out", str(out)]
    assert cli(args) == 0
    first = (out / "query.npy").read_bytes()
    assert cli(args) == 0 and "already holds these" in capsys.readouterr().out
    assert cli([*args[:-3], "train", "--out", str(out)]) == 1  # other queries: refused, file kept
    assert "query.npy: exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "query.npy").read_bytes() == first
    assert cli([*args[:-3], "train", "--out", str(out), "--overwrite"]) == 0
