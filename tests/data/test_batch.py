"""The typed batch: collators build it from Groups, the seed dict is its image, the loader pins and moves it."""

from __future__ import annotations

import pytest
import torch

from densetune.data.batch import Batch, PairBatch, as_batch, typed_batch
from densetune.data.collators import BiEncoderCollator, CrossEncoderCollator
from densetune.data.records import Doc, Group
from densetune.train.loop import TypedCollate


def groups(scores: bool = False) -> list[Group]:
    return [
        Group(
            query=f"what is topic {i}",
            query_id=f"q{i}",
            docs=[
                Doc(id=f"d{i}{j}", text=f"passage {j} about topic {i}", title="T" if j else "")
                for j in range(3)
            ],
            scores=[3.0, 2.0, 1.0] if scores else None,
            task="qa",
        )
        for i in range(2)
    ]


def test_collate_groups_is_the_seed_dict_typed(minilm_tokenizer):
    collate = BiEncoderCollator(minilm_tokenizer, q_max_len=16, p_max_len=24, query_prefix="query:")
    batch = collate.collate_groups(groups(scores=True))
    seed = collate(groups(scores=True))
    assert isinstance(batch, Batch) and batch.query_ids == ["q0", "q1"]
    assert set(seed) == {f for f, v in vars(batch).items() if v is not None and f != "query_ids"}
    for key, value in seed.items():
        mine = getattr(batch, key)
        assert torch.equal(mine, value) if torch.is_tensor(value) else mine == value
    assert batch.d_input_ids.shape[0] == 6 and batch.teacher_scores.shape == (2, 3) and batch.task == "qa"
    # the dict form reads back to the same batch (what the models and losses do with a seed's dict)
    back = as_batch(seed)
    assert all(torch.equal(getattr(back, k), v) for k, v in seed.items() if torch.is_tensor(v))


def test_typed_collate_reads_seed_dicts_and_keeps_query_ids(minilm_tokenizer):
    pairs = TypedCollate(CrossEncoderCollator(32, minilm_tokenizer))(groups())
    assert isinstance(pairs, PairBatch) and pairs.input_ids.shape[0] == 6 and pairs.labels.tolist() == [0, 0]
    assert pairs.query_ids == ["q0", "q1"]
    bi = TypedCollate(BiEncoderCollator(minilm_tokenizer, q_max_len=16, p_max_len=24))(groups())
    assert isinstance(bi, Batch) and bi.query_ids == ["q0", "q1"] and bi.teacher_scores is None
    assert typed_batch(bi) is bi


def test_to_moves_every_tensor_and_keeps_the_rest(minilm_tokenizer):
    batch = BiEncoderCollator(minilm_tokenizer, q_max_len=16, p_max_len=24).collate_groups(groups())
    moved = batch.to("meta")
    assert moved.q_input_ids.device.type == "meta" and moved.passage_doc_ids.device.type == "meta"
    assert moved.task == "qa" and moved.query_ids == ["q0", "q1"] and batch.q_input_ids.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_dataloader_pinning_pins_the_dataclass(minilm_tokenizer):
    from torch.utils.data._utils.pin_memory import pin_memory

    batch = BiEncoderCollator(minilm_tokenizer, q_max_len=16, p_max_len=24).collate_groups(groups())
    pinned = pin_memory(batch)
    assert isinstance(pinned, Batch) and pinned.q_input_ids.is_pinned() and pinned.passage_doc_ids.is_pinned()
    assert pinned.to("cuda").d_attention_mask.is_cuda
