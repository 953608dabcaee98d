"""BGE-EN-ICL's data API (seed 002): the seed's usage example runs on the shipped example data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from densetune.compat.bge_icl import DataArguments, SameDatasetTrainDataset, SameEmbedCollator
from densetune.errors import DataError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "bge_icl"  # 4 files x 28 rows: retrieval, sts, clustering, classification


def _args(**kw):
    base = dict(
        train_data=str(EXAMPLES),
        query_max_len=512,
        passage_max_len=512,
        train_group_size=8,
        use_special_tokens=True,
        symmetric_batch_size=8,
        max_class_neg=3,
    )
    base.update(kw)
    return DataArguments(**base)


def test_data_arguments_upstream_defaults():
    args = DataArguments()
    assert (args.train_group_size, args.query_max_len, args.passage_max_len) == (8, 32, 128)
    assert (args.symmetric_batch_size, args.symmetric_train_group_size, args.max_class_neg) == (128, 8, 1000)
    assert (args.example_query_max_len, args.example_passage_max_len) == (64, 96)
    assert args.use_special_tokens and args.retrieval_use_examples and not args.load_from_disk
    assert args.max_example_num_per_dataset == 10_000_000_000


@pytest.mark.slow
def test_seed_usage_example_batches_come_whole_from_one_dataset(icl_tokenizer):
    tokenizer = icl_tokenizer
    args = _args()
    dataset = SameDatasetTrainDataset(args, batch_size=4, seed=42, tokenizer=tokenizer)
    collator = SameEmbedCollator(tokenizer, query_max_len=512, passage_max_len=512)
    loader = DataLoader(dataset, batch_size=1, collate_fn=collator)

    # retrieval: 28 // 4 = 7 batches; the three symmetric sets: 28 // 8 = 3 each (4 rows left out)
    assert len(dataset) == 7 + 3 * 3 == len(loader)
    response = tokenizer.convert_tokens_to_ids("<response>")
    sizes, with_examples = Counter(), 0
    for step, batch in enumerate(loader):
        rows = dataset.batch_indices(step)
        names = {dataset._name_of(int(r)) for r in rows}
        assert len(names) == 1  # one dataset per batch
        kind = Path(names.pop()).stem
        q, p = batch["query"]["input_ids"], batch["passage"]["input_ids"]
        b = q.shape[0]
        assert b == (4 if kind == "retrieval" else 8)
        n = {"retrieval": 8, "sts": 8, "clustering": 8, "classification": 4}[kind]  # per-type group size
        assert p.shape[0] == b * n
        assert batch["messages"] == (
            ["not in-batch"] if kind in ("clustering", "classification") else ["normal"] * (b * n)
        )
        assert q.shape[1] % 8 == 0 and q.shape[1] <= 512
        # every query ends in <response> + EOS (left padding); more than one <response>: in-context examples
        assert (q[:, -2] == response).all()
        with_examples += int(((q == response).sum(1) > 1).sum())
        sizes[kind] += 1
    assert sizes == {"retrieval": 7, "sts": 3, "clustering": 3, "classification": 3}
    assert with_examples > 0


@pytest.mark.slow
def test_epochs_processes_and_saved_sets(icl_tokenizer, tmp_path):
    args = _args(save_to_disk=True, save_disk_path=str(tmp_path / "saved"))
    one = SameDatasetTrainDataset(args, batch_size=4, seed=7, tokenizer=icl_tokenizer)
    n = len(one)
    first = [one.batch_indices(i).tolist() for i in range(n)]
    assert sorted(r for b in first for r in b) == sorted(set(r for b in first for r in b))  # no repeats
    # the same item for the same index; past len(): the next epoch, which refresh_epoch() moves to
    assert one[3][2] == one[3][2] and one[3][0]["input_ids"] == one[3][0]["input_ids"]
    after = one.batch_indices(n).tolist()
    one.refresh_epoch()
    assert one.batch_indices(0).tolist() == after and after != first[0]

    # two processes: disjoint halves of the same global batches
    ranks = [
        SameDatasetTrainDataset(
            _args(), batch_size=2, seed=7, tokenizer=icl_tokenizer, process_index=r, num_processes=2
        )
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == n
    for i in range(n):
        a, b = ranks[0].batch_indices(i).tolist(), ranks[1].batch_indices(i).tolist()
        assert not set(a) & set(b) and sorted(a + b) == sorted(first[i])

    # the saved set (Arrow + .log index) loads back, either way, with the same datasets and batches
    saved = tmp_path / "saved"
    assert (saved / ".log").is_file() and json.loads((saved / ".log").read_text())[
        "data_names"
    ] == one.data_names
    for again_args in (_args(load_from_disk=True, load_disk_path=str(saved)), _args(train_data=str(saved))):
        again = SameDatasetTrainDataset(again_args, batch_size=4, seed=7, tokenizer=icl_tokenizer)
        assert again.data_names == one.data_names and len(again) == n
        assert again.batch_indices(2).tolist() == first[2]
        assert (
            again[2][0]["input_ids"]
            == SameDatasetTrainDataset(_args(), batch_size=4, seed=7, tokenizer=icl_tokenizer)[2][0][
                "input_ids"
            ]
        )


def test_bad_rows_and_paths_name_the_place(icl_tokenizer, tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = {"query": "q", "pos": ["p"], "neg": ["n"], "prompt": "p"}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "pos": 3}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: pos"):
        SameDatasetTrainDataset(_args(train_data=str(bad)), batch_size=1, seed=0, tokenizer=icl_tokenizer)
    with pytest.raises(DataError, match="train_data"):
        SameDatasetTrainDataset(
            _args(train_data=str(tmp_path / "nope-not-a-hub-set")),
            batch_size=1,
            seed=0,
            tokenizer=icl_tokenizer,
        )


def test_special_tokens_must_be_in_the_tokenizer(decoder_tokenizer):
    with pytest.raises(ValueError, match="LLM_SPECIAL_TOKENS"):
        SameDatasetTrainDataset(_args(), batch_size=4, seed=0, tokenizer=decoder_tokenizer)
    plain = SameDatasetTrainDataset(
        _args(use_special_tokens=False), batch_size=4, seed=0, tokenizer=decoder_tokenizer
    )
    text = decoder_tokenizer.decode(plain[0][0]["input_ids"][0])
    assert "Instruct: " in text and "\nQuery: " in text
    assert isinstance(torch.tensor(plain[0][0]["input_ids"][0]), torch.Tensor)


def _cache_as_hub_dataset(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """Lay ``files`` out in ``cache`` as ``datasets`` leaves a Hub dataset it downloaded (what offline reads)."""
    from datasets.packaged_modules.json.json import Json

    name = repo.replace("/", "___")
    Json(
        cache_dir=str(cache), dataset_name=name, data_files={k: str(v) for k, v in files.items()}, hash="h"
    ).download_and_prepare()
    (config,) = (cache / name).glob("default-*")
    config.rename(cache / name / "default")
    for arrow in (cache / name / "default").rglob(f"{name}-*.arrow"):
        arrow.rename(arrow.with_name(arrow.name.replace(name, repo.split("/")[1], 1)))


@pytest.mark.slow
def test_offline_cached_hub_dataset_one_dataset_per_split(icl_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True, raising=False)
    cache = tmp_path / "data_cache"
    _cache_as_hub_dataset(
        cache, "someone/icl-mini", {"sts": EXAMPLES / "sts.jsonl", "retrieval": EXAMPLES / "retrieval.jsonl"}
    )
    args = _args(train_data="someone/icl-mini", cache_path=str(cache))
    dataset = SameDatasetTrainDataset(args, batch_size=4, seed=1, tokenizer=icl_tokenizer)
    assert sorted(dataset.data_names) == ["someone/icl-mini:retrieval", "someone/icl-mini:sts"]
    assert len(dataset) == 7 + 3
    queries, passages, messages, _ = dataset[0]
    assert len(passages["input_ids"]) == 8 * len(queries["input_ids"])
