"""Where encoding time goes: the tokenizer (per batch, in threads, in one call) against the model's forward alone.

Reads the first ``--passages`` SciFact abstracts (title + " " + text, as bench_encode.py) and times, each on
its own, in passages/s:

- ``tokenize, batch B``: one tokenizer call per batch of ``--batch`` texts, padded tensors (what an encoder
  does per batch);
- ``tokenize, batch B, T threads``: the same calls spread over ``--threads`` threads (fast tokenizers release
  the GIL);
- ``tokenize, one call``: one call over every text, no padding (the tokenizer's own parallel ceiling);
- ``forward only``: the model on tokens made beforehand, longest batches first, in the arithmetic ``densetune
  encode`` uses (bf16 weights where the device computes bf16 natively);
- ``densetune encode_texts``: the whole loop, for comparison.

If ``forward only`` is far above the tokenizer rows, encoding is tokenizer-bound on this machine.

    python bench/profile_encode.py --device cuda --passages 10000 --batch 256
    python bench/profile_encode.py --passages 1000        # CPU
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_common import add_model_data_device, default_model, print_machine, scifact_missing, set_offline_env
from bench_encode import read_passages

set_offline_env()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_data_device(parser)
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=4, help="tokenizer threads of the threaded row")
    args = parser.parse_args(argv)
    if scifact_missing(args.data):
        return 2
    import torch

    from densetune.models.loaders import load_encoder

    texts = read_passages(Path(args.data), args.passages)
    model = load_encoder(args.model or default_model(), device=args.device, precision="auto")
    tok = model.tokenizer
    starts = range(0, len(texts), args.batch)

    def batch(i: int):
        return tok(texts[i : i + args.batch], padding=True, truncation=True, max_length=args.max_length,
                   return_tensors="pt")  # fmt: skip

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    def rate(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return len(texts) / (time.perf_counter() - t)

    rows = [(f"tokenize, batch {args.batch}", rate(lambda: [batch(i) for i in starts]))]
    with ThreadPoolExecutor(args.threads) as pool:
        rows.append(
            (
                f"tokenize, batch {args.batch}, {args.threads} threads",
                rate(lambda: list(pool.map(batch, starts))),
            )
        )
    rows.append(("tokenize, one call", rate(lambda: tok(texts, truncation=True, max_length=args.max_length))))
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    texts[:] = [texts[i] for i in order]
    inputs = [batch(i) for i in starts]

    def embed(b) -> torch.Tensor:
        on = {k: v.to(model.device) for k, v in b.items()}
        return model.encode(on["input_ids"], on["attention_mask"], is_query=False,
                            token_type_ids=on.get("token_type_ids")).float().cpu()  # fmt: skip

    with torch.inference_mode():
        model.eval()
        embed(inputs[0])  # warm-up
        rows.append(("forward only", rate(lambda: [embed(b) for b in inputs])))
    rows.append(
        (
            "densetune encode_texts",
            rate(lambda: model.encode_texts(texts, is_query=False, batch_size=args.batch)),
        )
    )
    print(f"\n{len(texts)} passages, batch {args.batch}, max {args.max_length} tokens, {args.device}")
    print(f"{'stage':<44}{'passages/s':>12}")
    for name, value in rows:
        print(f"{name:<44}{value:>12.0f}")
    print_machine()
    return 0


if __name__ == "__main__":
    sys.exit(main())
