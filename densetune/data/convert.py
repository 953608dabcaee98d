"""``densetune convert IN OUT --to FORMAT``: read training data in any format, write it in another.

Reading is :func:`densetune.data.formats.iter_examples`; writing, and what each output format cannot carry,
is :mod:`densetune.data.writers`.
"""

from __future__ import annotations

import argparse

from densetune.data.formats import ReadStats, iter_examples
from densetune.data.writers import WRITE_FORMATS, write_examples
from densetune.paths import add_overwrite_argument, check_output


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="training file or BEIR directory, any supported format")
    parser.add_argument("output", help="output file (corpus-id: the JSON; corpus directories go beside it)")
    parser.add_argument("--to", required=True, choices=WRITE_FORMATS, dest="fmt", help="output format")
    parser.add_argument("--split", default="train", help="qrels split of a BEIR directory (default: train)")
    parser.add_argument(
        "--skip-invalid", action="store_true", help="skip invalid records (counted) instead of stopping"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="corpus cache (default: $DENSETUNE_CACHE or ~/.cache/densetune)"
    )
    add_overwrite_argument(parser, "OUTPUT")


def main(args: argparse.Namespace) -> int:
    check_output(args.output, args.overwrite)
    stats = ReadStats()
    examples = iter_examples(
        args.input, split=args.split, skip_invalid=args.skip_invalid, stats=stats, cache_dir=args.cache_dir
    )
    n = write_examples(examples, args.output, args.fmt)
    formats = ", ".join(sorted(set(stats.formats.values())))
    print(
        f"read {stats.read} examples ({formats}) from {args.input}; wrote {n} to {args.output} ({args.fmt})"
    )
    if stats.skipped:
        print(f"skipped {stats.skipped} invalid records; first: {stats.errors[0]}")
    return 0
