"""MatryoshkaLoss against hand computations on small tensors; the truncation it uses; its config checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densetune.errors import ConfigError, DensetuneError
from densetune.losses import ContrastiveLoss, DistillationLoss, MatryoshkaLoss, RetrievalObjective
from densetune.models.matryoshka import check_dims, parse_dims, truncate


def _ce(row: list[float], target: int) -> float:
    return -row[target] + math.log(sum(math.exp(v) for v in row))


def _unit(rows: list[list[float]]) -> list[list[float]]:
    return [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


# two queries, n=2 passages each, H=3
Q = [[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]
P = [[0.9, 0.1, 1.0], [0.5, 0.5, 0.0], [0.2, 0.8, 0.3], [0.6, 0.3, -2.0]]


def _hand_contrastive(q: list[list[float]], p: list[list[float]], temperature: float) -> float:
    """In-batch InfoNCE by hand: query i's target is column 2i."""
    total = 0.0
    for i, qi in enumerate(q):
        total += _ce([_dot(qi, pj) / temperature for pj in p], 2 * i)
    return total / len(q)


def test_loss_matches_hand_computation_with_renormalised_cuts():
    loss_fn = MatryoshkaLoss(ContrastiveLoss(temperature=0.5), [2, 3], weights=[0.25, 1.0])
    q, p = torch.tensor(_unit(Q)), torch.tensor(_unit(P))
    got = loss_fn(q, p, n_passages=2)
    # dims are sorted largest first, each weight staying with its dim
    assert loss_fn.dims == [3, 2] and loss_fn.weights == [1.0, 0.25]
    full = _hand_contrastive(_unit(Q), _unit(P), 0.5)
    cut = _hand_contrastive(_unit([r[:2] for r in _unit(Q)]), _unit([r[:2] for r in _unit(P)]), 0.5)
    assert got.item() == pytest.approx(1.0 * full + 0.25 * cut, rel=1e-5)


def test_without_normalisation_the_cut_is_the_raw_prefix():
    loss_fn = MatryoshkaLoss(ContrastiveLoss(temperature=1.0), [1], normalize=False)
    got = loss_fn(torch.tensor(Q), torch.tensor(P), n_passages=2)
    expected = _hand_contrastive([r[:1] for r in Q], [r[:1] for r in P], 1.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_full_dimension_alone_equals_the_plain_objective_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(4, 8, generator=g), dim=-1).requires_grad_(True)
    p = F.normalize(torch.randn(12, 8, generator=g), dim=-1).requires_grad_(True)
    inputs = {
        "n_passages": 3,
        "passage_doc_ids": torch.randint(0, 5, (12,), generator=g),
        "teacher_scores": torch.randn(4, 3, generator=g),
    }
    objective = RetrievalObjective(ContrastiveLoss(0.05), DistillationLoss("kl"), contrastive_weight=0.3)
    plain = objective(q, p, **inputs)
    plain_grads = torch.autograd.grad(plain, (q, p))
    wrapped = MatryoshkaLoss(objective, [8], embedding_dim=8)(q, p, **inputs)
    wrapped_grads = torch.autograd.grad(wrapped, (q, p))
    torch.testing.assert_close(wrapped, plain, atol=1e-6, rtol=1e-6)
    for a, b in zip(wrapped_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_sum_over_dims_is_the_sum_of_the_objective_on_each_cut():
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(3, 16, generator=g), dim=-1)
    p = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    objective = RetrievalObjective(ContrastiveLoss(0.1), DistillationLoss("kl"))
    teacher = torch.randn(3, 2, generator=g)
    got = MatryoshkaLoss(objective, [16, 8, 4], [1.0, 0.5, 2.0])(q, p, n_passages=2, teacher_scores=teacher)
    expected = sum(
        w
        * objective(
            F.normalize(q[:, :d], dim=-1), F.normalize(p[:, :d], dim=-1), n_passages=2, teacher_scores=teacher
        )
        for d, w in ((16, 1.0), (8, 0.5), (4, 2.0))
    )
    torch.testing.assert_close(got, expected)
    # the small cuts change the value: the test above cannot pass by ignoring them
    assert abs(got.item() - objective(q, p, n_passages=2, teacher_scores=teacher).item()) > 1e-3


def test_truncate_numpy_and_torch_agree_and_none_changes_nothing():
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    cut = truncate(x, 3, True)
    assert cut.shape == (5, 3) and np.allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(cut, truncate(torch.from_numpy(x), 3, True).numpy(), atol=1e-6)
    np.testing.assert_array_equal(truncate(x, 3, False), x[:, :3])
    assert truncate(x, None, True) is x
    with pytest.raises(DensetuneError, match="out of range: the embeddings have 6"):
        truncate(x, 7, True)


@pytest.mark.parametrize(
    ("dims", "weights", "words"),
    [
        ([], None, "non-empty list"),
        ([384, 0], None, "positive integers"),
        ([384, "64"], None, "positive integers"),
        ([128, 128], None, "distinct"),
        ([512, 64], None, "exceeds the model's embedding dimension 384"),
        ([256, 64], [1.0], "one weight per dimension"),
        ([256, 64], [1.0, -1.0], ">= 0"),
        ([256, 64], [0, 0], "every weight is 0"),
    ],
)
def test_dims_are_checked_in_one_line_naming_the_key(dims, weights, words):
    with pytest.raises(ConfigError, match=words) as err:
        check_dims(dims, weights, embedding_dim=384)
    assert "\n" not in str(err.value) and "loss.matryoshka_" in str(err.value)


def test_parse_dims():
    assert parse_dims("384, 128,384") == [384, 128]
    assert parse_dims(None) is None
    for bad in ("", "a,b", "0", "-3"):
        with pytest.raises(DensetuneError, match="--dim expects positive integers"):
            parse_dims(bad)
