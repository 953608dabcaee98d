"""densetune: fine-tune and evaluate retrieval models (bi-encoders, rerankers, LLM embedders) on your data.

Start with `densetune quickstart` (about 6 minutes on a CPU), or `densetune COMMAND --help` for one step.
Bad input prints one line naming file, line and field and exits 1 (DENSETUNE_DEBUG=1 shows the traceback).

For developers: a command module defines ``configure_parser(parser)`` and ``main(args) -> int``; argument
errors exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
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
    "train": ("densetune.train.recipe", "train a bi-encoder, LLM embedder or reranker from a YAML recipe"),
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


# sub-command -> one working example, the last lines of its --help (the same chain as README.md)
EXAMPLES: dict[str, str] = {
    "validate": "densetune validate examples/",
    "convert": "densetune convert examples/flag.jsonl runs/flag_as_corpus_id.json --to corpus-id",
    "train": "densetune train configs/minilm_scifact.yaml train.epochs=1 optim.lr=3e-5",
    "encode": "densetune encode --model runs/minilm_scifact/model --corpus ../shared/data/scifact --out emb/",
    "search": "densetune search --queries emb/ --corpus emb/ --top-k 100 --out run.trec",
    "evaluate": "densetune evaluate --run run.trec --qrels ../shared/data/scifact/qrels/test.tsv",
    "mine": "densetune mine --model sentence-transformers/all-MiniLM-L6-v2 --data ../shared/data/scifact "
    "--split train --out runs/scifact_mined.jsonl --num-negatives 9 --fill random",
    "score": "densetune score --model runs/minilm_reranker/model --data runs/scifact_mined.jsonl "
    "--out runs/scifact_scored.jsonl",
    "rerank": "densetune rerank --model runs/minilm_reranker/model --run run.trec --data ../shared/data/scifact "
    "--split test --out run.reranked.trec",
    "fuse": "densetune fuse bm25.run run.trec --out fused.run",
    "export": "densetune export runs/minilm_scifact/model --to onnx --out deploy/",
    "quickstart": "densetune quickstart --max-steps 20",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("densetune")
    except PackageNotFoundError:  # run from a source tree without installing
        from densetune import __version__

        return __version__


def _set_verbosity(verbose: int) -> None:
    """Quiet by default: the libraries' loading bars and reports are off, warnings stay; ``-v`` shows all.

    Environment variables reach the libraries when they are imported later; the calls cover them when they
    are imported already (tests call :func:`main` in-process).
    """
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.utils

        huggingface_hub.utils.disable_progress_bars()


def _available() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s module is imported (the others pull in torch for nothing)."""
    user_doc = __doc__.split("\n\nFor developers")[0]
    parser = argparse.ArgumentParser(
        prog="densetune",
        description=user_doc,
        epilog="example:\n  densetune quickstart",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"densetune {_version()}")
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="also print the libraries' loading bars, reports and info messages",
    )
    # also before the command (`densetune -v train ...`); a sub-parser's default would overwrite "verbose"
    parser.add_argument(
        "-v", "--verbose", dest="verbose_top", action="count", default=0, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in _available().items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[verbose],
            epilog=f"example:\n  {EXAMPLES[name]}" if name in EXAMPLES else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
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
    _set_verbosity(args.verbose + args.verbose_top)
    try:
        code = int(importlib.import_module(args._module).main(args) or 0)
        if "torch.distributed" in sys.modules:  # a corpus command under torchrun joined a group: leave it
            from densetune.distributed import leave

            leave()
        return code
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
