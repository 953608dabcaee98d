"""Benchmark: BiEncoderCollator against a plain per-batch ``tokenizer(...)`` call, MiniLM fast tokenizer.

Batches of 64 queries x (1 positive + 7 negatives), queries cut at 64 tokens and passages at 256, with
``query:`` / ``passage:`` prefixes and padding to a multiple of 8: the shape of the H100 training run in
../shared/reference/peers.md. Texts are SciFact queries and abstracts (title + text) from
../shared/data/scifact when present, else generated sentences of similar lengths.

Rows, all timed in the same process on the same batches:

- ``tokenizer(...) baseline``: the texts already prefixed and flattened, one tokenizer call for the queries and
  one for the passages (truncation, padding, tensors): what any collator without a cache must do.
- ``seed two-step``: NeMo Automodel's way, tokenise without padding then ``tokenizer.pad`` (same tensors).
- ``collator, cache off``: BiEncoderCollator with ``cache_tokens=0``, NeMo-style dicts or
  :class:`~densetune.data.records.Group` objects in, the full output (prefixes, labels, passage_doc_ids).
- ``collator, cache: 1st epoch``: the default collator (token cache on) meeting the batches for the first time;
  passages repeat across batches as hard negatives do, so part of them are cache hits already.
- ``collator, cache: later epochs``: the same after one pass (every text cached): only padding is left.

Reported: groups (examples) per second, real (unpadded) tokens per second, padded tokens per second, and the
ratio to the baseline. The last line states the token rate a GPU step consumes at the measured plain-loop
H100 speed (484 samples/s for MiniLM at 64 x 8), so the headroom of one collating process is visible.

Usage:
    python bench/bench_collate.py                 # 40 batches, 3 warm-up
    python bench/bench_collate.py --batches 100 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

from bench_common import SCIFACT, default_model, print_header

H100_MINILM_SAMPLES_PER_S = 484.0  # peers.md: plain PyTorch loop, MiniLM-L6, 64 x (1+7), q 64 / p 256, bf16


def load_texts(seed: int) -> tuple[list[str], list[str], str]:
    """(queries, passages, source description)."""
    if (SCIFACT / "corpus.jsonl").is_file():
        with open(SCIFACT / "queries.jsonl", encoding="utf-8") as f:
            queries = [json.loads(line)["text"] for line in f]
        with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as f:
            passages = [f"{r['title']} {r['text']}".strip() for r in map(json.loads, f)]
        return queries, passages, f"SciFact ({len(queries)} queries, {len(passages)} passages)"
    rng = random.Random(seed)
    words = [f"w{n}" for n in range(5000)]
    queries = [" ".join(rng.choices(words, k=rng.randint(6, 20))) for _ in range(2000)]
    passages = [" ".join(rng.choices(words, k=rng.randint(80, 300))) for _ in range(10000)]
    return queries, passages, "generated text (../shared/data/scifact not found)"


def make_batches(queries, passages, num_batches: int, batch_size: int, group_size: int, seed: int):
    rng = random.Random(seed)
    batches = []
    for b in range(num_batches):
        items = []
        for i in range(batch_size):
            doc_idx = rng.sample(range(len(passages)), group_size)
            items.append(
                {
                    "question": rng.choice(queries),
                    "doc_text": [passages[j] for j in doc_idx],
                    "doc_image": [""] * group_size,
                    "doc_id": [f"doc-{j}" for j in doc_idx],
                    "query_instruction": "",
                    "passage_instruction": "",
                    "query_id": f"{b}-{i}",
                }
            )
        batches.append(items)
    return batches


def time_interleaved(paths, num_inputs: int, warmup: int) -> list[tuple[float, list]]:
    """Median seconds per call and the outputs of each ``(fn, inputs)`` path.

    The paths take turns on every batch (round-robin, the starting path rotating each round), so a busy
    machine slows them all alike and the ratios stay fair even when the absolute numbers move.
    """
    times: list[list[float]] = [[] for _ in paths]
    outputs: list[list] = [[] for _ in paths]
    for b in range(num_inputs):
        for k in range(len(paths)):
            p = (b + k) % len(paths)
            fn, inputs = paths[p]
            start = time.perf_counter()
            out = fn(inputs[b])
            elapsed = time.perf_counter() - start
            if b >= warmup:
                times[p].append(elapsed)
                outputs[p].append(out)
    return [(statistics.median(t), o) for t, o in zip(times, outputs)]


def token_counts(outputs, q_key: str, d_key: str) -> tuple[float, float]:
    """Mean (real, padded) tokens per batch."""
    real = [int(o[q_key].sum()) + int(o[d_key].sum()) for o in outputs]
    padded = [o[q_key].numel() + o[d_key].numel() for o in outputs]
    return statistics.mean(real), statistics.mean(padded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--q-max-len", type=int, default=64)
    parser.add_argument("--p-max-len", type=int, default=256)
    parser.add_argument(
        "--threads", type=int, default=0, help="RAYON_NUM_THREADS for the tokenizer (0: default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.threads:
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers import AutoTokenizer

    from densetune.data.collators import BiEncoderCollator, feature_to_group

    tokenizer = AutoTokenizer.from_pretrained(default_model())
    queries, passages, source = load_texts(args.seed)
    batches = make_batches(
        queries, passages, args.batches + args.warmup, args.batch_size, args.group_size, args.seed
    )
    group_batches = [[feature_to_group(x) for x in b] for b in batches]
    settings = dict(
        q_max_len=args.q_max_len,
        p_max_len=args.p_max_len,
        query_prefix="query:",
        passage_prefix="passage:",
        pad_to_multiple_of=8,
    )
    uncached = BiEncoderCollator(tokenizer, cache_tokens=0, **settings)
    first_epoch = BiEncoderCollator(tokenizer, **settings)  # token cache fills as the batches come
    later_epoch = BiEncoderCollator(tokenizer, **settings)
    for batch in batches:  # one untimed epoch: every text of the run is cached
        later_epoch(batch)
    prepared = [uncached.texts(b)[:2] for b in batches]
    slots = sum(len(x["doc_text"]) for b in batches for x in b)
    distinct = len({t for b in batches for x in b for t in x["doc_text"]})

    def baseline(texts):
        q, d = texts
        common = dict(truncation=True, padding=True, pad_to_multiple_of=8, return_tensors="pt")
        qe = tokenizer(q, max_length=args.q_max_len, **common)
        de = tokenizer(d, max_length=args.p_max_len, **common)
        return {"q_attention_mask": qe["attention_mask"], "d_attention_mask": de["attention_mask"]}

    def seed_two_step(batch):
        q, d, _ = uncached.texts(batch)
        out = {}
        for prefix, texts, max_len in (("q_", q, args.q_max_len), ("d_", d, args.p_max_len)):
            enc = tokenizer(texts, max_length=max_len, truncation=True, return_token_type_ids=False)
            feats = [{k: enc[k][i] for k in enc} for i in range(len(texts))]
            padded = tokenizer.pad(feats, padding=True, pad_to_multiple_of=8, return_tensors="pt")
            out.update({prefix + k: v for k, v in padded.items()})
        return out

    rows = [
        ("tokenizer(...) baseline", baseline, prepared),
        ("seed two-step (tokenize, pad)", seed_two_step, batches),
        ("collator, cache off (dicts)", uncached, batches),
        ("collator, cache off (Groups)", uncached, group_batches),
        ("collator, cache: 1st epoch", first_epoch, batches),
        ("collator, cache: later epochs", later_epoch, batches),
    ]
    timed = time_interleaved([(fn, inputs) for _, fn, inputs in rows], len(batches), args.warmup)
    results = []
    for (name, _, _), (seconds, outputs) in zip(rows, timed):
        real, padded = token_counts(outputs, "q_attention_mask", "d_attention_mask")
        results.append((name, seconds, real, padded))

    base_seconds = results[0][1]
    print(
        f"texts: {source}; batch {args.batch_size} x (1+{args.group_size - 1}), q<={args.q_max_len}, "
        f"p<={args.p_max_len} tokens, pad to 8; {args.batches} timed batches (median, paths interleaved), "
        f"{os.cpu_count()} CPU(s), RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'default')}; "
        f"{distinct} distinct passages in {slots} passage slots"
    )
    header = (
        f"{'path':32} {'ms/batch':>9} {'examples/s':>11} {'real tok/s':>12} {'padded tok/s':>13} "
        f"{'vs baseline':>12}"
    )
    print_header(header)
    for name, seconds, real, padded in results:
        print(
            f"{name:32} {seconds * 1e3:9.1f} {args.batch_size / seconds:11.0f} {real / seconds:12,.0f} "
            f"{padded / seconds:13,.0f} {base_seconds / seconds:11.2f}x"
        )
    real_per_example = results[0][2] / args.batch_size
    gpu_tokens = H100_MINILM_SAMPLES_PER_S * real_per_example
    print(
        f"\nGPU side: the H100 plain loop trains MiniLM at {H100_MINILM_SAMPLES_PER_S:.0f} samples/s at this "
        f"shape = {gpu_tokens:,.0f} real tokens/s ({real_per_example:.0f} real tokens per example here)."
    )
    for name, seconds, _, _ in results[2:]:
        rate = args.batch_size / seconds
        workers = max(1, -(-H100_MINILM_SAMPLES_PER_S // rate))
        print(
            f"  {name}: {rate:,.0f} examples/s per process = {rate / H100_MINILM_SAMPLES_PER_S:.2f}x that step; "
            f"{workers:.0f} DataLoader worker(s) keep it fed"
        )


if __name__ == "__main__":
    main()
