"""The ``densetune`` command line: one sub-command per workflow, each implemented in its own module.

A command module defines ``configure_parser(parser: argparse.ArgumentParser) -> None`` and
``main(args: argparse.Namespace) -> int``. Input errors (:class:`DensetuneError`) print one line and exit 1;
argument errors exit 2; nothing prints a traceback unless ``DENSETUNE_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from densetune.errors import DensetuneError

# sub-command -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": (
        "densetune.validate",
        "check training data, corpora, runs, qrels and recipes; print counts and every problem",
    ),
    "convert": ("densetune.data.convert", "convert training data between formats"),
    "train": ("densetune.train.recipe", "train a bi-encoder or LLM embedder from a YAML recipe"),
    "encode": ("densetune.retrieval.encode", "embed queries or a corpus into .npy + .ids"),
    "search": ("densetune.retrieval.search", "top-k search over encoded embeddings; writes a TREC run"),
    "fuse": ("densetune.retrieval.fuse", "reciprocal rank fusion of TREC runs (e.g. BM25 + dense)"),
    "evaluate": ("densetune.retrieval.evaluate", "nDCG / MRR / Recall / MAP of a run against qrels"),
    "mine": ("densetune.retrieval.mine", "mine hard negatives for training data"),
    "score": ("densetune.retrieval.score", "add teacher scores from a reranker to training data"),
    "rerank": ("densetune.retrieval.rerank", "rerank a retrieval run with a cross-encoder"),
    "export": ("densetune.export", "export a bi-encoder or cross-encoder to ONNX, checked against torch"),
    "quickstart": ("densetune.quickstart", "data -> baseline -> mine -> train -> evaluate, in one command"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s module is imported (the others pull in torch for nothing)."""
    parser = argparse.ArgumentParser(prog="densetune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in _available().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).configure_parser(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).main(args) or 0)
    except DensetuneError as err:
        if os.environ.get("DENSETUNE_DEBUG") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
