"""Where a densetune training step spends its time on this machine: torch.profiler over the recipe's own loop.

The recipe of ``bench/bench_train.py`` (SciFact rows, MiniLM, contrastive loss, AdamW), smaller by default so
a step takes seconds on a small CPU. The whole ``train()`` is profiled; the table splits its wall time into
the phases the loop has (data loading + collation, forward + backward, gradient clipping, the AdamW step,
zero_grad) and lists the operators with the most self time, so what is not model arithmetic stands out.

    python bench/profile_train_step.py                          # 8 x (1+3), q 64 / p 128, 4 steps, auto
    python bench/profile_train_step.py --precision fp32 --fused false
    python bench/profile_train_step.py --device cuda --batch 64 --negatives 7 --p-len 256   # a GPU step
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_common import SCIFACT, default_model, print_machine, scifact_missing, set_offline_env
from bench_train import densetune_overrides, write_rows

set_offline_env()

PHASES = {
    "data loading + collation": "enumerate(DataLoader)",
    "AdamW step": "Optimizer.step#AdamW.step",
    "zero_grad": "Optimizer.zero_grad#AdamW.zero_grad",
    "gradient clipping": "clip_grad_norm_",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model folder (default: the installed all-MiniLM-L6-v2)"
    )
    parser.add_argument("--data", default=str(SCIFACT))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--q-len", type=int, default=64)
    parser.add_argument("--p-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="profiled steps after one warm-up step")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument(
        "--fused", default=None, choices=("true", "false"), help="optim.fused (default: the recipe's)"
    )
    parser.add_argument("--top", type=int, default=12, help="operators listed")
    parser.add_argument("--shapes", action="store_true", help="list operators by input shapes too")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    args.model = args.model or default_model()
    if scifact_missing(args.data):
        return 2
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from densetune.train.config import load_config
    from densetune.train.loop import TrainRecipe

    args.workers, args.warmup = 0, 1
    cuda = args.device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort_key = "self_device_time_total" if cuda else "self_cpu_time_total"
    clip = torch.nn.utils.clip_grad_norm_

    def labelled_clip(*a, **k):
        with record_function("clip_grad_norm_"):
            return clip(*a, **k)

    torch.nn.utils.clip_grad_norm_ = labelled_clip  # the loop looks it up at call time
    print_machine()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, data = write_rows(args, work)
        overrides = densetune_overrides(args, data, work)
        if args.fused is not None:
            overrides.append(f"optim.fused={args.fused}")
        recipe = TrainRecipe(load_config(None, overrides))
        recipe.save_checkpoint = lambda: None
        recipe.setup()
        recipe.cfg.train.max_steps = recipe.total_steps = args.warmup
        recipe.train()  # warm-up step, not profiled
        recipe.cfg.train.max_steps = recipe.total_steps = args.warmup + args.steps
        with profile(activities=activities, record_shapes=args.shapes) as prof:
            start = time.perf_counter()
            recipe.train()
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
        recipe.cleanup()
    events = prof.key_averages()
    total_us = wall * 1e6
    print(
        f"\ntraining step profile: {Path(args.model).name}, {args.device}, {recipe.precision.name}, "
        f"{args.batch} x (1+{args.negatives}), q {args.q_len} / p {args.p_len}, {args.steps} steps, "
        f"optim.fused={recipe.optimizer.defaults.get('fused')}, {torch.get_num_threads()} threads"
    )
    print(f"{'phase':<40}{'ms/step':>10}{'share':>8}")
    rest = total_us
    for name, key in PHASES.items():
        us = sum(e.cpu_time_total for e in events if e.key.startswith(key))
        rest -= us
        print(f"{name:<40}{us / args.steps / 1e3:>10.1f}{us / total_us:>8.1%}")
    print(
        f"{'forward + backward + loss (the rest)':<40}{rest / args.steps / 1e3:>10.1f}{rest / total_us:>8.1%}"
    )
    print(f"{'step (wall)':<40}{total_us / args.steps / 1e3:>10.1f}")
    if cuda:
        # on a GPU the phases above are host time (launches, syncs); the device's own time per step:
        busy = sum(e.self_device_time_total for e in events) / args.steps
        print(f"{'GPU busy (sum of kernel time)':<40}{busy / 1e3:>10.1f}{busy * args.steps / total_us:>8.1%}")
    print(f"\ntop {args.top} operators by self {'GPU' if cuda else 'CPU'} time:")
    print(prof.key_averages().table(sort_by=sort_key, row_limit=args.top, max_name_column_width=45))
    if args.shapes:
        print(f"\ntop {args.top} operators and input shapes by self CPU time:")
        table = prof.key_averages(group_by_input_shape=True).table(
            sort_by=sort_key,
            row_limit=args.top,
            max_name_column_width=30,
            max_shapes_column_width=70,
        )
        print(table)
    print(f"cores: {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
