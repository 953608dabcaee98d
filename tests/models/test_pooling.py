"""Pooling modes on hand-made tensors: masked mean, cls, last token and weighted mean under both paddings."""

from __future__ import annotations

import pytest
import torch

from densetune.models.pooling import (
    POOLING_MODES,
    from_sentence_transformers,
    pool,
    resolve_pooling,
    to_sentence_transformers,
)


def _padded(real: torch.Tensor, pad: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence [L, H] padded with `pad` junk rows on `side` -> hidden [1, L+pad, H], mask [1, L+pad]."""
    junk = torch.full((pad, real.shape[1]), 99.0)
    ones, zeros = torch.ones(real.shape[0]), torch.zeros(pad)
    if side == "left":
        return torch.cat([junk, real])[None], torch.cat([zeros, ones])[None].long()
    return torch.cat([real, junk])[None], torch.cat([ones, zeros])[None].long()


REAL = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])  # 3 real tokens, H=2

EXPECTED = {
    "mean": torch.tensor([3.0, 5.0]),
    "cls": torch.tensor([1.0, 2.0]),
    "last": torch.tensor([5.0, 9.0]),
    # weights 1, 2, 3: (1*[1,2] + 2*[3,4] + 3*[5,9]) / 6
    "weighted_mean": torch.tensor([22.0 / 6, 37.0 / 6]),
}


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pool_ignores_padding_on_either_side(mode, side):
    for pad in (0, 2):
        hidden, mask = _padded(REAL, pad, side)
        torch.testing.assert_close(pool(hidden, mask, mode)[0], EXPECTED[mode])


def test_last_token_in_a_mixed_batch_left_and_right():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # values 0..7
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, left, "cls").flatten().tolist() == [2.0, 5.0]


def test_aliases_and_errors():
    assert resolve_pooling("avg") == "mean"
    assert resolve_pooling("last_token") == "last"
    assert resolve_pooling("EOS") == "last"
    assert resolve_pooling("weighted_avg") == "weighted_mean"
    with pytest.raises(ValueError, match="mean, cls, last, weighted_mean"):
        resolve_pooling("max")
    with pytest.raises(ValueError, match="hidden"):
        pool(torch.zeros(2, 3), torch.ones(2, 3), "mean")


def test_half_precision_accumulates_in_float32():
    hidden = torch.full((1, 4096, 1), 1.001, dtype=torch.bfloat16)
    out = pool(hidden, torch.ones(1, 4096, dtype=torch.long), "mean")
    assert out.dtype == torch.bfloat16
    assert abs(out.float().item() - hidden[0, 0, 0].float().item()) < 1e-2


def test_all_padding_row_gives_zeros_not_nan():
    out = pool(torch.ones(1, 3, 2), torch.zeros(1, 3, dtype=torch.long), "mean")
    assert torch.isfinite(out).all()


def test_sentence_transformers_names_round_trip():
    for mode in POOLING_MODES:
        assert from_sentence_transformers({"pooling_mode": to_sentence_transformers(mode)}) == mode
    legacy = {
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
    }
    assert from_sentence_transformers(legacy) == "mean"
    assert from_sentence_transformers({"pooling_mode_lasttoken": True}) == "last"
    with pytest.raises(ValueError, match="combines"):
        from_sentence_transformers({"pooling_mode": ["mean", "max"]})


def test_matches_sentence_transformers_pooling_module():
    pytest.importorskip("sentence_transformers")
    try:
        from sentence_transformers.sentence_transformer.modules.pooling import Pooling  # v6
    except ImportError:
        from sentence_transformers.models import Pooling
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 4)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    for mode in POOLING_MODES:
        module = Pooling(4, pooling_mode=to_sentence_transformers(mode))
        expected = module({"token_embeddings": hidden, "attention_mask": mask})["sentence_embedding"]
        torch.testing.assert_close(pool(hidden, mask, mode), expected)
