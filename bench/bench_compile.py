"""Two levers on a training step that is not tokenising: ``torch.compile``, and the model's dropout.

A contrastive step of the bench_train.py shape (``--batch`` queries of ``--q-len`` tokens, each with 1 +
``--negatives`` passages of ``--p-len`` tokens; all-MiniLM-L6-v2 or ``--model``; mean pooling, in-batch
softmax at temperature 0.05, fused AdamW), on random token ids at fixed shapes, in bf16 autocast where the
device computes it natively, inside :func:`densetune.hostmem.reuse_freed_memory` on a CPU.

- ``--compare compile`` (default): the step and a no-grad encode of the passages, each eager and with the
  encoder wrapped in ``torch.compile`` (inductor, default mode). The model stays in eval mode (no dropout:
  the arithmetic alone). Fixed shapes build the compiled graph once; real batches pad to their longest text,
  so a compiled model would recompile or need dynamic shapes, a cost left out here: the best case.
  Compilation time is reported apart from the steps.
- ``--compare dropout``: the step in train mode with the model's dropout, with attention-probability
  dropout set to 0 (BERT-style models: the ``nn.Dropout`` of each ``attention.self`` module), and with every
  dropout set to 0.

    python bench/bench_compile.py                       # CPU: 32 x (1+3), q 64 / p 256, 3 steps each
    python bench/bench_compile.py --compare dropout
    python bench/bench_compile.py --device cuda --batch 64 --negatives 7
"""

from __future__ import annotations

import argparse
import sys
import time

from bench_common import default_model, print_machine, set_offline_env

set_offline_env()


def set_dropout(model, p: float, *, only: str = "") -> None:
    """Every ``nn.Dropout`` of ``model`` whose name contains ``only`` drops with probability ``p``."""
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and only in name:
            module.p = p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", default="compile", choices=("compile", "dropout"))
    parser.add_argument("--model", default=None, help="default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--q-len", type=int, default=64)
    parser.add_argument("--p-len", type=int, default=256)
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps after one warm-up (or compile) step"
    )
    args = parser.parse_args(argv)
    import torch
    from transformers import AutoModel

    from densetune.hostmem import reuse_freed_memory
    from densetune.precision import resolve_precision

    precision = resolve_precision("auto", torch.device(args.device))
    torch.manual_seed(0)
    n_p = args.batch * (1 + args.negatives)
    q_ids = torch.randint(1000, 20000, (args.batch, args.q_len), device=args.device)
    p_ids = torch.randint(1000, 20000, (n_p, args.p_len), device=args.device)
    labels = torch.arange(args.batch, device=args.device) * (1 + args.negatives)

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    def embed(encoder, ids):
        hidden = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        return torch.nn.functional.normalize(hidden.mean(1).float(), dim=-1)

    def step(encoder, opt) -> None:
        with precision.autocast():
            q, p = embed(encoder, q_ids), embed(encoder, p_ids)
        loss = torch.nn.functional.cross_entropy(q @ p.T / 0.05, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def encode(encoder, opt) -> None:
        with torch.no_grad(), precision.autocast():
            embed(encoder, p_ids).cpu()

    def eager(model):
        return model

    def no_attention_dropout(model):
        model.train()
        set_dropout(model, 0.0, only="attention.self")
        return model

    def no_dropout(model):
        model.train()
        set_dropout(model, 0.0)
        return model

    if args.compare == "compile":
        variants = {"eager": eager, "compiled": torch.compile}
        rows = {"train step": step, "encode batch": encode}
    else:
        variants = {
            "model's dropout": lambda model: model.train(),
            "attention dropout 0": no_attention_dropout,
            "all dropout 0": no_dropout,
        }
        rows = {"train step": step}
    results = {}
    for variant, prepare in variants.items():
        model = AutoModel.from_pretrained(args.model or default_model()).to(args.device)  # in eval mode
        encoder = prepare(model)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=True)
        with reuse_freed_memory(args.device == "cpu"):
            for name, fn in rows.items():
                sync()
                t = time.perf_counter()
                fn(encoder, opt)  # the warm-up; for a compiled model, compilation
                sync()
                first = time.perf_counter() - t
                t = time.perf_counter()
                for _ in range(args.steps):
                    fn(encoder, opt)
                sync()
                results[(variant, name)] = (first, (time.perf_counter() - t) / args.steps)
                print(
                    f"[{variant}] {name}: first {first:.1f} s, then {results[(variant, name)][1]:.2f} s each"
                )
    print(
        f"\n{args.compare} on {args.device} ({precision.name}), {args.batch} x (1+{args.negatives}), "
        f"q {args.q_len} / p {args.p_len}, {args.steps} timed after 1"
    )
    if args.compare == "compile":
        print(f"{'':<14}{'eager s':>10}{'compiled s':>12}{'speed-up':>10}{'compile s':>11}{'break-even':>12}")
        for name in rows:
            (_, plain), (first, compiled) = results[("eager", name)], results[("compiled", name)]
            gain = plain - compiled
            even = f"{(first - compiled) / gain:.0f} steps" if gain > 0 else "never"
            print(
                f"{name:<14}{plain:>10.2f}{compiled:>12.2f}{plain / compiled:>9.2f}x{first:>11.1f}{even:>12}"
            )
    else:
        base = results[("model's dropout", "train step")][1]
        print(f"{'train step, train mode':<28}{'s':>8}{'speed-up':>10}")
        for variant in variants:
            seconds = results[(variant, "train step")][1]
            print(f"{variant:<28}{seconds:>8.2f}{base / seconds:>9.2f}x")
    print_machine()
    return 0


if __name__ == "__main__":
    sys.exit(main())
