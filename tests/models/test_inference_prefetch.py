"""The inference loop tokenises ahead of the GPU in threads: same batches, same order, same embeddings."""

from __future__ import annotations

import threading

import torch

from densetune.models import inference


def test_prepared_yields_every_batch_in_order_prepared_ahead_in_another_thread():
    batches = [[0, 1], [2, 3], [4]]
    threads = []

    def prepare(index):
        threads.append(threading.current_thread().name)
        return [i * 10 for i in index]

    inline = list(inference._prepared(batches, prepare, ahead=0))
    assert inline == [([0, 1], [0, 10]), ([2, 3], [20, 30]), ([4], [40])]
    assert set(threads) == {threading.current_thread().name}

    threads.clear()
    seen = []
    for index, inputs in inference._prepared(batches, prepare, ahead=2):
        seen.append((index, inputs))
        if len(seen) == 1:
            # by the time the first batch is handed out, the next one was submitted as well
            assert len(threads) >= 1
    assert seen == inline
    assert all(name.startswith("densetune-tokenize") for name in threads)


def test_prepared_in_several_threads_keeps_the_order():
    import time

    batches = [[i] for i in range(12)]

    def prepare(index):  # later batches finish first: the order must come from the loop, not the threads
        time.sleep(0.002 * (12 - index[0]))
        return (index[0], threading.current_thread().name)

    out = list(inference._prepared(batches, prepare, ahead=6, threads=3))
    assert [index for index, _ in out] == batches
    assert [value for _, (value, _) in out] == list(range(12))
    assert len({name for _, (_, name) in out}) > 1


def test_encode_with_prefetch_equals_encode_without(minilm_path, monkeypatch):
    from densetune.models.biencoder import BiEncoder

    minilm = BiEncoder.from_pretrained(minilm_path)
    texts = [f"passage number {i} " + "word " * (i % 7) for i in range(21)]
    plain = minilm.encode_texts(texts, is_query=False, batch_size=4)
    original = inference._prepared
    monkeypatch.setattr(
        inference, "_prepared", lambda b, p, ahead, threads: original(b, p, ahead=4, threads=2)
    )
    ahead = minilm.encode_texts(texts, is_query=False, batch_size=4)
    assert torch.equal(plain, ahead)
