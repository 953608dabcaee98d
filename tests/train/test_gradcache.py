"""Gradient cache gives the parameter gradients of the plain loss (fp32, 1e-5), dropout included."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_biencoder

from densetune.losses import (
    ContrastiveLoss,
    DistillationLoss,
    MatryoshkaLoss,
    RetrievalObjective,
    loss_inputs,
)
from densetune.models.biencoder import BiEncoder
from densetune.train.gradcache import _plan, grad_cache_step


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add spin-waiting on a busy machine
    yield
    torch.set_num_threads(before)


def tiny_bert(dropout: float, seed: int = 0) -> BiEncoder:
    return tiny_biencoder(dropout=dropout, seed=seed)


def random_batch(n_queries: int = 6, n_passages: int = 3, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)

    def side(rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(1, 50, (rows, length), generator=g)
        lengths = torch.randint(2, length + 1, (rows,), generator=g)
        mask = (torch.arange(length)[None] < lengths[:, None]).long()  # right padding
        return ids * mask, mask

    q_ids, q_mask = side(n_queries, 7)
    d_ids, d_mask = side(n_queries * n_passages, 11)
    doc_ids = torch.randint(0, 8, (n_queries * n_passages,), generator=g)  # collisions: masking matters
    return {
        "q_input_ids": q_ids,
        "q_attention_mask": q_mask,
        "d_input_ids": d_ids,
        "d_attention_mask": d_mask,
        "passage_doc_ids": doc_ids,
        "labels": torch.zeros(n_queries, dtype=torch.long),
    }


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=name)


def plain_chunked_reference(model, loss_fn, batch, chunk_size) -> torch.Tensor:
    """The same forward calls as the cache's first pass, but with graphs: the uncached loss, same dropout."""
    qs, ps = [], []
    for sub in _plan(batch, chunk_size, chunk_size):
        q, p = model(sub)
        qs += [q] if q is not None else []
        ps += [p] if p is not None else []
    loss = loss_fn(torch.cat(qs), torch.cat(ps), **loss_inputs(batch))
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_matches_plain_loss_with_dropout(chunk_size):
    model = tiny_bert(dropout=0.1).train()
    batch = random_batch()
    loss_fn = ContrastiveLoss(temperature=0.05)

    torch.manual_seed(123)
    reference = plain_chunked_reference(model, loss_fn, batch, chunk_size)
    expected = grads(model)
    model.zero_grad(set_to_none=True)

    torch.manual_seed(123)
    loss = grad_cache_step(model, loss_fn, batch, chunk_size=chunk_size)
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
    assert_same_grads(grads(model), expected)
    # the dropout masks really differ between seeds (so matching them above was not luck)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    grad_cache_step(model, loss_fn, batch, chunk_size=chunk_size)
    other = grads(model)
    assert any((other[n] - expected[n]).abs().max() > 1e-4 for n in expected)


def test_matches_one_full_batch_forward_without_dropout():
    model = tiny_bert(dropout=0.0).train()
    batch = random_batch()
    loss_fn = RetrievalObjective(
        ContrastiveLoss(temperature=0.05), DistillationLoss("kl"), contrastive_weight=0.5, distill_weight=1.0
    )
    batch["teacher_scores"] = torch.randn(6, 3)
    q, p = model(batch)
    reference = loss_fn(q, p, **loss_inputs(batch))
    (0.25 * reference).backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)

    loss = grad_cache_step(model, loss_fn, batch, chunk_size=2, passage_chunk_size=5, scale=0.25)
    torch.testing.assert_close(loss, reference.detach(), atol=1e-6, rtol=1e-6)
    assert_same_grads(grads(model), expected)


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_matryoshka_loss_through_the_cache_gives_the_plain_gradients(chunk_size):
    """The cut and renormalisation run inside the loss on the cached embeddings: same grads as no cache."""
    model = tiny_bert(dropout=0.1).train()
    batch = random_batch()
    batch["teacher_scores"] = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    objective = RetrievalObjective(ContrastiveLoss(temperature=0.05), DistillationLoss("kl"))
    loss_fn = MatryoshkaLoss(objective, [32, 16, 4], [1.0, 0.5, 0.25], embedding_dim=model.embedding_dim)

    torch.manual_seed(11)
    reference = plain_chunked_reference(model, loss_fn, batch, chunk_size)
    expected = grads(model)
    model.zero_grad(set_to_none=True)

    torch.manual_seed(11)
    loss = grad_cache_step(model, loss_fn, batch, chunk_size=chunk_size)
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
    assert_same_grads(grads(model), expected)
    # the small dims add to the gradient: the plain objective's differs
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    plain_chunked_reference(model, objective, batch, chunk_size)
    plain = grads(model)
    assert any((plain[n] - expected[n]).abs().max() > 1e-4 for n in expected)


def test_accepts_a_loss_taking_the_batch():
    model = tiny_bert(dropout=0.0)
    batch = random_batch(n_queries=3, n_passages=2)
    contrastive = ContrastiveLoss(temperature=0.1)
    seen = {}

    def loss_from_embeddings(q, p, b):
        seen["batch"] = b
        return contrastive(q, p, **loss_inputs(b))

    loss = grad_cache_step(model, loss_from_embeddings, batch, chunk_size=2)
    assert seen["batch"] is batch and torch.isfinite(loss)
    with pytest.raises(ValueError, match="chunk sizes"):
        grad_cache_step(model, contrastive, batch, chunk_size=0)


@pytest.mark.slow
def test_minilm_real_model(minilm_path):
    model = BiEncoder.from_pretrained(minilm_path).train()  # MiniLM trains with dropout 0.1
    queries = ["what is dense retrieval", "who wrote hamlet", "boiling point of water"]
    docs = [
        "Dense retrieval embeds queries and passages.",
        "BM25 is a sparse ranking function.",
        "Hamlet is a tragedy by William Shakespeare.",
        "Macbeth is another play.",
        "Water boils at 100 degrees Celsius at sea level.",
        "Ice melts at zero degrees.",
    ]
    q = model.tokenize(queries, is_query=True)
    d = model.tokenize(docs, is_query=False)
    batch = {
        "q_input_ids": q["input_ids"],
        "q_attention_mask": q["attention_mask"],
        "d_input_ids": d["input_ids"],
        "d_attention_mask": d["attention_mask"],
    }
    loss_fn = ContrastiveLoss(temperature=0.05)
    torch.manual_seed(5)
    reference = plain_chunked_reference(model, loss_fn, batch, chunk_size=2)
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    loss = grad_cache_step(model, loss_fn, batch, chunk_size=2)
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
    assert_same_grads(grads(model), expected)
