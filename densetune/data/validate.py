"""``densetune validate FILE_OR_DIR...``: read training data completely and report counts and every problem.

Nothing stops at the first problem: each invalid record is one line ``path:line: field: what is wrong, what
was expected``, and a file that cannot be read at all (empty, binary, not UTF-8, broken JSON document, bad
corpus metadata) is one line too, after which the next file is read. Exit status 0 when there is no
problem, 1 otherwise; never a traceback.

Counts per input: examples, invalid records, unique queries, positives and negatives per example
(histograms), tasks, corpus sizes, duplicate examples (same query, positives and negatives), and examples
whose negatives contain one of their own positives (by document id, so also for inline text). The last two
are warnings: they do not fail validation.

Scale: one pass, memory bounded by a few bytes an example (hash arrays, see ``_Counter``), a progress bar on
stderr (examples/s, ETA for JSONL). Ctrl-C prints the counts so far and exits 130.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from densetune.data import beir
from densetune.data.corpus import MERLIN_METADATA, CorpusError, load_corpus
from densetune.data.formats import ReadStats, expand_paths, iter_chunks
from densetune.data.progress import data_bar
from densetune.errors import DataError


@dataclass
class InputSummary:
    """Counts for one input (a file, a BEIR split, or a corpus directory)."""

    path: str
    format: str = ""
    examples: int = 0
    invalid: int = 0
    unique_queries: int = 0
    positives: Counter = field(default_factory=Counter)
    negatives: Counter = field(default_factory=Counter)
    tasks: Counter = field(default_factory=Counter)
    corpora: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    negatives_with_positive: int = 0
    notes: Counter = field(default_factory=Counter)
    problems: int = 0
    interrupted: bool = False  # Ctrl-C while it was read: the counts are those so far


@dataclass
class ValidationReport:
    """What :func:`validate_paths` found.

    Attributes:
        inputs: one summary per input read.
        errors: every problem, in order (``str(err)`` is the one-line message).
    """

    inputs: list[InputSummary] = field(default_factory=list)
    errors: list[DataError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.interrupted

    @property
    def interrupted(self) -> bool:
        return any(s.interrupted for s in self.inputs)

    @property
    def examples(self) -> int:
        return sum(s.examples for s in self.inputs)

    def render(self, max_problems: int | None = None) -> str:
        """The report as aligned plain text: one block of counts per input, then every problem."""
        lines: list[str] = []
        for s in self.inputs:
            if not s.format:
                lines.append(f"{s.path}  [unreadable]  {s.problems} problem{'s' if s.problems != 1 else ''}")
                continue
            lines.append(f"{s.path}  [{s.format}]")
            rows = [("examples", s.examples), ("invalid records", s.invalid)]
            if s.format != "corpus":
                rows += [
                    ("unique queries", s.unique_queries),
                    ("positives per example", _hist(s.positives)),
                    ("negatives per example", _hist(s.negatives)),
                    ("tasks", _top(s.tasks)),
                ]
            rows.append(("corpora", ", ".join(f"{cid} ({n} docs)" for cid, n in s.corpora.items()) or "-"))
            if s.format != "corpus":
                rows += [
                    ("duplicate examples", _warn(s.duplicates)),
                    ("negatives holding a positive", _warn(s.negatives_with_positive)),
                ]
            rows += [(note, count) for note, count in s.notes.items()]
            rows.append(("problems", s.problems))
            lines += [f"  {k:<30} {v}" for k, v in rows]
        if self.errors:
            lines.append("")
            lines.append("problems:")
            shown = self.errors if max_problems is None else self.errors[:max_problems]
            lines += [str(e) for e in shown]
            if len(shown) < len(self.errors):
                lines.append(f"... and {len(self.errors) - len(shown)} more (--max-problems)")
        lines.append("")
        n_inputs = len(self.inputs)
        if self.interrupted:
            lines.append(
                f"INTERRUPTED: counts so far ({self.examples} examples read, {len(self.errors)} problems); "
                "inputs after the interrupted one were not read"
            )
        elif self.ok:
            lines.append(f"OK: {self.examples} examples in {n_inputs} inputs, no problems")
        else:
            bad = sum(1 for s in self.inputs if s.problems)
            lines.append(
                f"FAILED: {len(self.errors)} problems in {bad} of {n_inputs} inputs ({self.examples} valid examples)"
            )
        return "\n".join(lines)


def _warn(n: int) -> str:
    return f"{n}  (warning)" if n else "0"


def _hist(counter: Counter) -> str:
    if not counter:
        return "-"
    keys = sorted(counter)
    if len(keys) <= 10:
        return "  ".join(f"{k}:{counter[k]}" for k in keys)
    half, acc, median = (sum(counter.values()) - 1) // 2, 0, keys[0]
    for k in keys:
        acc += counter[k]
        if acc > half:
            median = k
            break
    common = "  ".join(f"{k}:{c}" for k, c in counter.most_common(5))
    return f"min {keys[0]}, median {median}, max {keys[-1]}; most common {common}"


def _top(counter: Counter, n: int = 8) -> str:
    if not counter:
        return "-"
    shown = "  ".join(f"{k or '(none)'}:{c}" for k, c in counter.most_common(n))
    return shown + (f"  ... ({len(counter) - n} more)" if len(counter) > n else "")


class _Counter:
    """The per-example counts of one input, in memory that stays compact at 10M examples.

    Unique queries and duplicate examples are counted from 64-bit hashes kept in numpy arrays (8 bytes an
    example, sorted and deduplicated as they grow), not Python sets: a set of 10M ints costs ~1 GB of heap and
    makes every garbage collection walk it, which slowed validation down as it went. Two different keys share
    a hash with probability ~N^2 / 2^64 (about 1e-5 at 10M): a possible miscount of one, never a wrong error.
    """

    _COMPACT = 1 << 22  # hashes buffered before a compaction (np.unique) folds them in

    def __init__(self, summary: InputSummary):
        self.summary = summary
        self.examples = 0
        self._queries = _HashSet()
        self._keys = _HashSet()

    def add(self, chunk) -> None:
        s = self.summary
        queries, keys = [], []
        for ex, rows in zip(chunk.examples, chunk.rows):
            # documents are compared by id: corpus rows for documents given by id, else Doc.id
            if rows is None:
                pos, neg = tuple(d.id for d in ex.positives), tuple(d.id for d in ex.negatives)
            else:
                pos, neg = tuple(rows[0].tolist()), tuple(rows[1].tolist())
            queries.append(hash(ex.query))
            keys.append(hash((ex.query, ex.corpus_id, pos, neg)))
            if set(pos) & set(neg):
                s.negatives_with_positive += 1
            s.positives[len(pos)] += 1
            s.negatives[len(neg)] += 1
            s.tasks[ex.task] += 1
        self._queries.extend(queries)
        self._keys.extend(keys)
        self.examples += len(keys)

    def finish(self) -> None:
        self.summary.unique_queries = self._queries.distinct()
        self.summary.duplicates = self._keys.total - self._keys.distinct()


class _HashSet:
    """Distinct 64-bit hashes in one sorted numpy array plus a buffer of new ones (a multiset's counts)."""

    def __init__(self):
        self.total = 0
        self._sorted = np.zeros(0, dtype=np.int64)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def extend(self, values: list[int]) -> None:
        self._buffer.append(np.fromiter(values, dtype=np.int64, count=len(values)))
        self._buffered += len(values)
        self.total += len(values)
        if self._buffered >= _Counter._COMPACT:
            self._compact()

    def _compact(self) -> None:
        if self._buffer:
            self._sorted = np.unique(np.concatenate([self._sorted, *self._buffer]))
            self._buffer, self._buffered = [], 0

    def distinct(self) -> int:
        self._compact()
        return len(self._sorted)


def _summarise_examples(
    path: Path, split: str, cache_dir: str | Path | None, label: str
) -> tuple[InputSummary, list[DataError]]:
    summary = InputSummary(label)
    stats = ReadStats()
    errors: list[DataError] = []
    counter = _Counter(summary)
    bar = data_bar("validate", path if path.is_file() else None)
    try:
        for chunk in iter_chunks(path, split=split, skip_invalid=True, stats=stats, cache_dir=cache_dir):
            counter.add(chunk)
            bar.update(len(chunk.examples))
    except KeyboardInterrupt:  # Ctrl-C: report the counts so far (main exits non-zero)
        summary.interrupted = True
    except DataError as err:
        errors.extend(err.errors if isinstance(err, CorpusError) else [err])
    except (
        pa.ArrowException,
        OSError,
        ValueError,
    ) as err:  # a corrupt Parquet corpus file, an unreadable path
        errors.append(DataError(f"cannot read: {err}", path))
    finally:
        bar.close()
    counter.finish()
    summary.format = stats.formats.get(str(path), "")
    summary.examples = counter.examples if summary.interrupted else stats.read
    summary.invalid = stats.skipped
    summary.corpora = dict(stats.corpora)
    summary.notes = stats.notes
    errors = stats.errors + errors
    summary.problems = len(errors)
    return summary, errors


def _summarise_corpus(path: Path, cache_dir: str | Path | None) -> tuple[InputSummary, list[DataError]]:
    summary = InputSummary(str(path), format="corpus")
    try:
        corpus = load_corpus(path, cache_dir=cache_dir)
        summary.corpora = {corpus.corpus_id: len(corpus)}
        summary.examples = 0
        errors: list[DataError] = []
    except CorpusError as err:
        errors = err.errors
    except DataError as err:
        errors = [err]
    except (pa.ArrowException, OSError, ValueError) as err:
        errors = [DataError(f"cannot read: {err}", path)]
    summary.problems = len(errors)
    return summary, errors


def validate_paths(
    paths: str | Path | Iterable[str | Path], *, split: str | None = None, cache_dir: str | Path | None = None
) -> ValidationReport:
    """Read every input completely and collect counts and every problem (never raises DataError).

    Args:
        paths: files, directories, globs; BEIR directories; NeMo corpus directories (checked as corpora).
        split: BEIR qrels split to check; default: every ``qrels/*.tsv``.
        cache_dir: corpus cache root.
    """
    report = ValidationReport()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for given in paths:
        try:
            expanded = expand_paths([given])
        except DataError as err:
            report.inputs.append(InputSummary(str(given), problems=1))
            report.errors.append(err)
            continue
        for path in expanded:
            if path.is_dir() and (path / MERLIN_METADATA).is_file():
                summary, errors = _summarise_corpus(path, cache_dir)
                report.inputs.append(summary)
                report.errors.extend(errors)
                continue
            if path.is_dir() and beir.is_beir_dir(path):
                splits = [split] if split else sorted(p.stem for p in (path / "qrels").glob("*.tsv"))
                if not splits:
                    report.inputs.append(InputSummary(str(path), format="beir", problems=1))
                    report.errors.append(
                        DataError("no qrels/*.tsv; expected qrels/train.tsv, dev.tsv or test.tsv", path)
                    )
                for s in splits:
                    summary, errors = _summarise_examples(path, s, cache_dir, f"{path} (split {s})")
                    report.inputs.append(summary)
                    report.errors.extend(errors)
                    if report.interrupted:
                        return report
                continue
            summary, errors = _summarise_examples(path, "train", cache_dir, str(path))
            report.inputs.append(summary)
            report.errors.extend(errors)
            if report.interrupted:
                return report
    return report


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="FILE_OR_DIR", help="training files, directories, BEIR datasets, corpora"
    )
    parser.add_argument("--split", default=None, help="BEIR qrels split to check (default: all)")
    parser.add_argument(
        "--cache-dir", default=None, help="corpus cache (default: $DENSETUNE_CACHE or ~/.cache/densetune)"
    )
    parser.add_argument(
        "--max-problems", type=int, default=None, help="print at most this many problem lines"
    )


def main(args: argparse.Namespace) -> int:
    report = validate_paths(args.paths, split=args.split, cache_dir=args.cache_dir)
    print(report.render(max_problems=args.max_problems))
    sys.stdout.flush()
    if report.interrupted:
        return 130  # the shell's code for Ctrl-C
    return 0 if report.ok else 1
