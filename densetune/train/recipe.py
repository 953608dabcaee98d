"""``densetune train CONFIG.yaml [key=value ...]``: read the recipe config, then set up, train and finish.

Single process: ``densetune train configs/minilm_scifact.yaml train.max_steps=100``.
Several GPUs (DDP; FSDP2 with ``train.fsdp=true``): ``torchrun --nproc_per_node=8 -m densetune train CONFIG``.
``train.batch_size`` is per device; the global batch is ``batch_size x processes x grad_accum_steps``.
"""

from __future__ import annotations

import argparse

import yaml

from densetune.errors import ConfigError
from densetune.train.checks import check_components
from densetune.train.config import load_config


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe YAML (see configs/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. optim.lr=3e-5 train.max_steps=100",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--check", action="store_true", help="validate the config and its components, then exit"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="discard another run's outputs in output.dir (same as output.overwrite=true)",
    )


def main(args: argparse.Namespace) -> int:
    overrides = [*args.overrides, "output.overwrite=true"] if args.overwrite else args.overrides
    cfg = load_config(args.config, overrides)
    problems = check_components(cfg)
    if problems:
        raise ConfigError(args.config, f"{len(problems)} problem(s): " + "; ".join(problems))
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if args.check:
        print(f"{args.config}: OK")
        return 0
    from densetune.train.loop import TrainRecipe

    TrainRecipe(cfg).run()
    return 0
