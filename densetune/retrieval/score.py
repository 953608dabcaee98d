"""``densetune score``: a reranker (teacher) scores every (query, document) pair of a training file.

The output is the training data again, with the scores next to the documents, ready for distillation:

- ``--format flag`` (FlagEmbedding JSONL, written by :func:`densetune.data.writers.write_examples`):
  ``pos_scores`` / ``neg_scores`` aligned with ``pos`` / ``neg``;
- ``--format llm-embedder`` (LLM-Embedder JSONL, written here): ``teacher_scores`` aligned with
  ``pos + neg`` (``history`` rows: aligned with ``history``), plus ``task`` and ``answers`` when the input
  was LLM-Embedder data.

Default: ``llm-embedder`` when the input is LLM-Embedder data, else ``flag``. Any format the data layer reads
is accepted as input (documents given by id are resolved from their corpus). A document is scored as the text
the output holds for it (``title + " " + text`` when it has a title), the query as is.

Resumable: examples are scored ``--chunk-size`` at a time; each finished chunk is written to
``OUT.partial/chunk-NNNNNN.jsonl`` and ``OUT.partial/progress.json`` records how far it got (and the
settings, which a re-run must repeat). Run the same command again after an interruption and it continues
after the last finished chunk; ``--restart`` discards the partial work. The final file is written atomically
(``OUT.tmp``, then renamed) and the partial directory removed. Chunk boundaries do not depend on where a run
stopped, so an interrupted and resumed run writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from densetune import distributed
from densetune.data.records import Example
from densetune.errors import DensetuneError
from densetune.models.loaders import check_model_path, load_reranker
from densetune.paths import add_overwrite_argument, atomic_path, check_output
from densetune.precision import add_precision_argument

OUTPUT_FORMATS = ("flag", "llm-embedder")
PROGRESS_FILE = "progress.json"
PROGRESS_VERSION = 1
# progress.json keys a resumed run must repeat: they decide which examples go in which chunk and their scores
_MUST_MATCH = ("inputs", "model", "format", "max_length", "chunk_size", "split")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="reranker folder (or hub name available offline)")
    parser.add_argument("--data", required=True, nargs="+", help="training file(s), directories or globs")
    parser.add_argument("--out", required=True, help="output JSONL with the scores")
    parser.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default=None,
        help="flag: pos_scores/neg_scores; llm-embedder: teacher_scores (default: llm-embedder for "
        "LLM-Embedder input, else flag)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass (default 32)")
    parser.add_argument(
        "--max-length", type=int, default=None, help="token limit of a pair (default: the model's)"
    )
    parser.add_argument(
        "--chunk-size", type=int, default=512, help="examples per resumable chunk (default 512)"
    )
    parser.add_argument("--split", default="train", help="qrels split for BEIR directories (default train)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="model dtype: float32 (default), bfloat16, float16")
    add_precision_argument(parser)
    parser.add_argument("--restart", action="store_true", help="discard OUT.partial and start over")
    add_overwrite_argument(parser, "--out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # test hook: stop (as if interrupted) after this many chunks were written in this run
    parser.add_argument("--stop-after-chunks", type=int, default=None, help=argparse.SUPPRESS)


# ---------------------------------------------------------------------------------------------------------
# Scoring and writing (usable from Python)
# ---------------------------------------------------------------------------------------------------------


def score_examples(model: Any, examples: Sequence[Example], *, batch_size: int = 32) -> int:
    """Fill ``pos_scores`` and ``neg_scores`` of each example with the model's scores, in one batched pass.

    Args:
        model: a :class:`densetune.models.crossencoder.CrossEncoder` (anything with ``score_pairs``).
        examples: Examples with document texts; modified in place.
        batch_size: pairs per forward pass.

    Returns:
        The number of pairs scored.
    """
    from densetune.data.corpus import doc_text

    queries: list[str] = []
    passages: list[str] = []
    for ex in examples:
        for d in (*ex.positives, *ex.negatives):
            queries.append(ex.query)
            passages.append(doc_text(d))
    scores = model.score_pairs(queries, passages, batch_size=batch_size).tolist() if queries else []
    at = 0
    for ex in examples:
        n_pos, n_neg = len(ex.positives), len(ex.negatives)
        ex.pos_scores = scores[at : at + n_pos]
        ex.neg_scores = scores[at + n_pos : at + n_pos + n_neg]
        at += n_pos + n_neg
    return len(queries)


def llm_embedder_record(ex: Example, *, with_task: bool) -> dict[str, Any]:
    """One LLM-Embedder row: ``query``, ``pos``, ``neg`` (or ``history``), ``teacher_scores``
    (aligned with ``pos + neg``), and ``task`` / ``answers`` when asked for and set."""
    from densetune.data.corpus import doc_text

    rec: dict[str, Any] = {"query": ex.query}
    if ex.history and not ex.positives:
        rec["history"] = [doc_text(d) for d in ex.negatives]  # the reader makes history rows the candidates
    else:
        rec["pos"] = [doc_text(d) for d in ex.positives]
        rec["neg"] = [doc_text(d) for d in ex.negatives]
    if ex.pos_scores is not None or ex.neg_scores is not None:
        rec["teacher_scores"] = list(ex.pos_scores or []) + list(ex.neg_scores or [])
    if with_task and ex.task:
        rec["task"] = ex.task
    if ex.answers:
        rec["answers"] = list(ex.answers)
    return rec


def write_llm_embedder(examples: Iterable[Example], path: str | Path, *, with_task: bool = False) -> int:
    """Write Examples as LLM-Embedder JSONL (see :func:`llm_embedder_record`), atomically.

    Returns:
        The number of rows written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for ex in examples:
                f.write(json.dumps(llm_embedder_record(ex, with_task=with_task), ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


# ---------------------------------------------------------------------------------------------------------
# Resume state
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ScoreProgress:
    """What ``OUT.partial/progress.json`` holds: the settings that fix the output, and how far it got."""

    inputs: list[list[Any]]
    model: str
    format: str
    max_length: int | None
    chunk_size: int
    split: str
    chunks: int = 0
    examples: int = 0
    pairs: int = 0
    written: int = 0
    version: int = PROGRESS_VERSION
    lost: dict[str, int] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        tmp = directory / (PROGRESS_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, directory / PROGRESS_FILE)

    @classmethod
    def load(cls, directory: Path) -> ScoreProgress | None:
        path = directory / PROGRESS_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (ValueError, TypeError) as err:
            raise DensetuneError(f"{path}: unreadable progress file ({err}); rerun with --restart") from None

    def mismatches(self, other: ScoreProgress) -> list[str]:
        """The settings that differ from ``other``, described."""
        out = []
        for key in _MUST_MATCH:
            then, now = getattr(self, key), getattr(other, key)
            if then != now:
                out.append(
                    "the input files changed (paths, sizes or modification times)"
                    if key == "inputs"
                    else f"{key}: {then!r} then, {now!r} now"
                )
        return out


class _LostFields(logging.Filter):
    """Collects the data writer's "format cannot carry" warnings of each chunk, to report totals once."""

    _ITEM = re.compile(r"([^,]+?) \((\d+) examples\)")

    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "cannot carry:" not in message:
            return True
        for name, count in self._ITEM.findall(message.split("cannot carry:", 1)[1]):
            self.counts[name.strip()] += int(count)
        return False


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    from densetune.data.arrowcache import fingerprint
    from densetune.data.formats import detect_format, expand_paths, iter_examples

    out = Path(args.out)
    for name, value in (("--batch-size", args.batch_size), ("--chunk-size", args.chunk_size)):
        if value < 1:
            raise DensetuneError(f"{name} must be >= 1, got {value}")
    paths = expand_paths(args.data)
    if any(p.resolve() == out.resolve() for p in paths):
        raise DensetuneError(f"--out {out} is also an input; write the scores to another file")
    check_output(out, args.overwrite)
    input_formats = [detect_format(p) for p in paths]
    fmt = args.format or ("llm-embedder" if all(f == "llm-embedder" for f in input_formats) else "flag")
    model_path = check_model_path(args.model)

    partial = out.with_name(out.name + ".partial")
    wanted = ScoreProgress(
        inputs=fingerprint(paths),
        model=model_path,
        format=fmt,
        max_length=args.max_length,
        chunk_size=args.chunk_size,
        split=args.split,
    )
    # torchrun: chunks are scored in rounds, chunk i of a round by rank i; rank 0 keeps the progress file
    rank, world, device = distributed.join(args.device)
    progress = distributed.on_main(lambda: _resume_or_start(partial, wanted, restart=args.restart))
    resumed_from = progress.examples

    model = None  # loaded once the first chunk has been read: bad data fails before the slow model load
    examples = iter_examples(paths, split=args.split)
    # examples of finished chunks are read again (cheap) but not rescored
    chunks = _chunks(itertools.islice(examples, progress.examples, None), args.chunk_size)
    with_task = all(f == "llm-embedder" for f in input_formats)
    bar = _progress_bar(args, initial=progress.examples) if rank == 0 else None
    start = time.perf_counter()
    pairs_now = 0
    chunks_now = 0
    stats = TeacherStats()
    lost: Counter = Counter(progress.lost)
    data_logger = logging.getLogger("densetune.data")
    round_lost: Counter = Counter()
    lost_filter = _LostFields(round_lost)
    data_logger.addFilter(lost_filter)
    try:
        while batch := list(itertools.islice(chunks, world)):  # the same round on every rank
            done = None
            if rank < len(batch):
                chunk = batch[rank]
                if model is None:
                    model = load_reranker(
                        model_path,
                        max_length=args.max_length,
                        dtype=args.dtype,
                        device=device,
                        precision=args.precision,
                    )
                round_lost.clear()
                n_pairs = score_examples(model, chunk, batch_size=args.batch_size)
                chunk_path = partial / f"chunk-{progress.chunks + rank:06d}.jsonl"
                written = _write_chunk(chunk, chunk_path, fmt, with_task=with_task)
                chunk_stats = TeacherStats()
                chunk_stats.add(chunk)
                done = (len(chunk), n_pairs, written, dict(round_lost), chunk_stats)
            for n_examples, n_pairs, written, chunk_lost, chunk_stats in filter(
                None, distributed.gather_objects(done, world)
            ):
                progress.written += written
                progress.chunks += 1
                progress.examples += n_examples
                progress.pairs += n_pairs
                lost.update(chunk_lost)
                pairs_now += n_pairs
                chunks_now += 1
                stats.merge(chunk_stats)
                if bar is not None:
                    bar.update(n_examples)
            progress.lost = dict(lost)
            if rank == 0:
                progress.save(partial)  # the round's chunks are all on disk: count them
            if args.stop_after_chunks is not None and chunks_now >= args.stop_after_chunks:
                raise KeyboardInterrupt  # test hook: behave as if the user pressed Ctrl-C here
    finally:
        data_logger.removeFilter(lost_filter)
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start

    if rank == 0:
        _assemble(partial, progress.chunks, out)
        shutil.rmtree(partial, ignore_errors=True)
        _print_summary(progress, out, fmt, elapsed, pairs_now, resumed_from, lost, stats, world)
    distributed.barrier()
    return 0


def _resume_or_start(partial: Path, wanted: ScoreProgress, *, restart: bool) -> ScoreProgress:
    if restart and partial.exists():
        shutil.rmtree(partial)
    saved = ScoreProgress.load(partial) if partial.is_dir() else None
    if saved is None:
        if partial.exists():
            shutil.rmtree(partial)  # a partial directory without progress holds nothing finished
        partial.mkdir(parents=True)
        wanted.save(partial)
        return wanted
    problems = saved.mismatches(wanted)
    if problems:
        raise DensetuneError(
            f"{partial} holds partial scores made with other settings ({'; '.join(problems)}); "
            "rerun with the same settings to resume, or add --restart"
        )
    print(
        f"resuming: {saved.examples} examples ({saved.chunks} chunks) already scored in {partial}",
        file=sys.stderr,
    )
    return saved


def _chunks(examples: Iterable[Example], size: int) -> Iterator[list[Example]]:
    it = iter(examples)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _write_chunk(chunk: list[Example], path: Path, fmt: str, *, with_task: bool) -> int:
    if fmt == "llm-embedder":
        return write_llm_embedder(chunk, path, with_task=with_task)
    from densetune.data.writers import write_examples

    return write_examples(chunk, path, "flag")


def _assemble(partial: Path, n_chunks: int, out: Path) -> None:
    """Concatenate the chunk files into ``out``, atomically."""
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        for i in range(n_chunks):
            with open(partial / f"chunk-{i:06d}.jsonl", "rb") as part:
                shutil.copyfileobj(part, f)


def _progress_bar(args: argparse.Namespace, *, initial: int):
    if args.no_progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc="score", unit="ex", initial=initial, disable=None, file=sys.stderr)


@dataclass
class TeacherStats:
    """How the teacher's scores sit against the labels, over the examples this run scored."""

    with_negatives: int = 0
    positive_first: int = 0
    pos_sum: float = 0.0
    pos_n: int = 0
    neg_sum: float = 0.0
    neg_n: int = 0

    def add(self, chunk: Iterable[Example]) -> None:
        for ex in chunk:
            pos, neg = ex.pos_scores or [], ex.neg_scores or []
            self.pos_sum += sum(pos)
            self.pos_n += len(pos)
            self.neg_sum += sum(neg)
            self.neg_n += len(neg)
            if pos and neg:
                self.with_negatives += 1
                self.positive_first += int(max(pos) > max(neg))

    def merge(self, other: TeacherStats) -> None:
        """Add the counts of ``other`` (another chunk's, or another process's)."""
        for name in ("with_negatives", "positive_first", "pos_sum", "pos_n", "neg_sum", "neg_n"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def line(self) -> str | None:
        if not self.with_negatives:
            return None
        share = 100.0 * self.positive_first / self.with_negatives
        return (
            f"teacher ranks a positive above every negative in {share:.1f}% of {self.with_negatives} examples; "
            f"mean score positives {self.pos_sum / max(self.pos_n, 1):.3f}, "
            f"negatives {self.neg_sum / max(self.neg_n, 1):.3f}"
        )


def _print_summary(
    progress: ScoreProgress,
    out: Path,
    fmt: str,
    elapsed: float,
    pairs_now: int,
    resumed_from: int,
    lost: Counter,
    stats: TeacherStats,
    world: int = 1,
) -> None:
    fields_written = "pos_scores, neg_scores" if fmt == "flag" else "teacher_scores"
    rate = pairs_now / elapsed if elapsed > 0 else 0.0
    line = (
        f"scored {progress.examples} examples ({progress.pairs} pairs); wrote {progress.written} to {out} "
        f"({fmt}: {fields_written}); this run {pairs_now} pairs in {elapsed:.1f} s ({rate:.1f} pairs/s)"
    )
    if world > 1:
        line += f" with {world} processes"
    if resumed_from:
        line += f", resumed after {resumed_from} examples"
    print(line)
    agreement = stats.line()
    if agreement:
        print(agreement)
    if lost:
        dropped = ", ".join(f"{name} ({count} examples)" for name, count in lost.items())
        print(f"warning: the {fmt} format cannot carry: {dropped}", file=sys.stderr)
