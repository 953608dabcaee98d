"""``densetune validate FILE_OR_DIR...``: read training data completely and report counts and every problem.

Nothing stops at the first problem: each invalid record is one line ``path:line: field: what is wrong, what
was expected``, and a file that cannot be read at all (empty, binary, not UTF-8, broken JSON document, bad
corpus metadata) is one line too, after which the next file is read. Exit status 0 when there is no
problem, 1 otherwise; never a traceback.

Counts per input: examples, invalid records, unique queries, positives and negatives per example
(histograms), tasks, corpus sizes, duplicate examples (same query, positives and negatives), and examples
whose negatives contain one of their own positives (by document id, so also for inline text). The last two
are warnings: they do not fail validation.

Other inputs are checked by their own reader, chosen by content: a YAML recipe (``.yaml``/``.yml``, the
training config loader), a TREC run or qrels file (the readers ``evaluate`` uses), and a corpus given as a
``.jsonl`` of ``{_id|id, text}`` rows (counted like a corpus directory). Corpora report empty documents
(all empty: a problem; some: a warning); training data reports document ids that come with two texts.

Scale: one pass, memory bounded by a few bytes an example (hash arrays, see ``_Counter``), a progress bar on
stderr (examples/s, ETA for JSONL). Ctrl-C prints the counts so far and exits 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from densetune.data import beir
from densetune.data.corpus import MERLIN_METADATA, CorpusError, load_corpus
from densetune.data.formats import ReadStats, expand_paths, iter_chunks
from densetune.data.inputs import read_document_file
from densetune.data.progress import data_bar
from densetune.data.qrels import evaluation_file_kind, read_query_file_qrels
from densetune.data.store import gc_paused
from densetune.errors import DataError
from densetune.paths import path_problem


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
            if s.format in _OTHER_KINDS:
                rows = [(note, count) for note, count in s.notes.items()] + [("problems", s.problems)]
                lines += [f"  {k:<30} {v}" for k, v in rows]
                continue
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


_OTHER_KINDS = ("config", "run", "qrels")


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
        self.errors: list[DataError] = []  # teacher scores that overflow the loss
        self.doc_texts = _DocTexts()
        self._queries = _HashSet()
        self._keys = _HashSet()

    def add(self, chunk) -> None:
        s = self.summary
        queries, keys = [], []
        for ex, rows in zip(chunk.examples, chunk.rows):
            # documents are compared by id: corpus rows for documents given by id, else Doc.id
            if rows is None:
                self.doc_texts.add(ex)
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
            overflow = _overflowing_scores(ex)
            if overflow is not None:
                self.errors.append(overflow)
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
        """Fold the buffer in: sort only the new hashes, then merge (linear: a stable sort of two sorted runs
        is one merge), so each compaction costs the new hashes' sort plus a pass, not a sort of everything."""
        if self._buffer:
            merged = np.concatenate([self._sorted, np.unique(np.concatenate(self._buffer))])
            merged.sort(kind="stable")
            keep = np.ones(len(merged), dtype=bool)
            np.not_equal(merged[1:], merged[:-1], out=keep[1:])
            self._sorted = merged[keep]
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
        with gc_paused():
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
    conflicts = counter.doc_texts.conflicts()
    if conflicts:
        summary.notes["document ids with two different texts"] = _warn(conflicts)
    errors = stats.errors + counter.errors + errors
    summary.problems = len(errors)
    return summary, errors


# Teacher scores are divided by a temperature (0.01 and up) and subtracted in float32 (max 3.4e38): beyond
# this magnitude the distillation loss overflows to inf / NaN.
SCORE_LIMIT = 1e36


def _overflowing_scores(ex) -> DataError | None:
    """A problem for the first teacher score whose magnitude would make the loss overflow, or None."""
    for key in ("pos_scores", "neg_scores"):
        for j, score in enumerate(getattr(ex, key) or ()):
            if abs(score) > SCORE_LIMIT:
                path, _, line = (ex.source or "").rpartition(":")
                return DataError(
                    f"teacher score {score:g} overflows the float32 loss; expected |score| <= {SCORE_LIMIT:g}",
                    path or ex.source,
                    int(line) if line.isdigit() else None,
                    f"{key}[{j}]",
                )
    return None


def _summarise_corpus(path: Path, cache_dir: str | Path | None) -> tuple[InputSummary, list[DataError]]:
    summary = InputSummary(str(path), format="corpus")
    try:
        corpus = load_corpus(path, cache_dir=cache_dir)
        summary.corpora = {corpus.corpus_id: len(corpus)}
        summary.examples = 0
        errors = _empty_documents(corpus, summary, path)
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
                    _add(report, summary, errors, path)
                    if report.interrupted:
                        return report
                continue
            if path.is_file() and (evaluation := _evaluation_kind(path)):
                report.inputs.append(_summarise_evaluation_file(path, evaluation, report))
                continue
            kind = _file_kind(path)
            if kind == "examples":
                summary, errors = _summarise_examples(path, "train", cache_dir, str(path))
            elif kind == "corpus":
                summary, errors = _summarise_corpus(path, cache_dir)
            else:
                summary, errors = _summarise_other(path, kind)
            _add(report, summary, errors, path)
            if report.interrupted:
                return report
    return report


def _file_kind(path: Path) -> str:
    """What a file given to validate holds, from its suffix and first line: ``config`` (YAML), ``run``,
    ``qrels``, ``corpus`` (JSON lines of documents) or ``examples`` (training data, the default: its reader
    says what is wrong with anything else)."""
    if path_problem(path) is not None:
        return "examples"
    if path.suffix in (".yaml", ".yml"):
        return "config"
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    first = text.split("\n", 1)[0].strip()
    if not first:
        return "examples"
    if first[0] in "{[":
        if first[0] == "{" and path.suffix == ".jsonl":
            try:
                obj = json.loads(first)
            except json.JSONDecodeError:
                return "examples"
            if (
                isinstance(obj, dict)
                and {"_id", "id"} & obj.keys()
                and "text" in obj
                and not obj.keys() & _EXAMPLE_KEYS
            ):
                return "corpus"
        return "examples"
    parts = first.split("\t") if "\t" in first else first.split()
    if len(parts) == 6 and parts[1] == "Q0":
        return "run"
    if len(parts) in (3, 4):
        return "qrels"
    return "examples"


_EXAMPLE_KEYS = {"query", "question", "pos", "pos_doc", "positive_passages", "history", "corpus", "data"}


def _summarise_other(path: Path, kind: str) -> tuple[InputSummary, list[DataError]]:
    """A recipe, run or qrels file, read by the reader the commands use; counts go to ``notes``."""
    from densetune.data.trec import read_qrels, read_run
    from densetune.errors import ConfigError

    summary = InputSummary(str(path), format=kind)
    errors: list[DataError] = []
    try:
        if kind == "config":
            from densetune.train.config import load_config

            load_config(path)
            summary.notes["recipe"] = "valid"
        elif kind == "run":
            run = read_run(path)
            summary.notes["queries"] = len(run)
            summary.notes["documents ranked"] = sum(len(d) for d in run.values())
        else:
            qrels = read_qrels(path)
            summary.notes["queries"] = len(qrels)
            summary.notes["judgements"] = sum(len(d) for d in qrels.values())
    except ConfigError as err:  # the key is the file (YAML problems) or a dotted recipe key
        where = err.key.startswith(str(path))
        errors.append(
            DataError(err.message, err.key) if where else DataError(err.message, path, field=err.key)
        )
    except DataError as err:
        errors.append(err)
    summary.problems = len(errors)
    return summary, errors


def _empty_documents(corpus, summary: InputSummary, path: Path) -> list[DataError]:
    """Documents with no text, title or image: all of them is a problem (nothing to retrieve), some a
    counted warning."""
    empty = None
    for name in ("text", "title", "image"):
        if name in corpus.table.column_names:
            none = pc.equal(pc.binary_length(corpus.table.column(name)), 0)
            empty = none if empty is None else pc.and_(empty, none)
    n_empty = int(pc.sum(empty).as_py() or 0) if empty is not None else 0
    if n_empty and n_empty == len(corpus):
        return [
            DataError(f"all {n_empty} documents are empty (no text, title or image); expected texts", path)
        ]
    if n_empty:
        summary.notes["empty documents"] = _warn(n_empty)
    return []


class _DocTexts:
    """Document ids given with two different texts in inline training data (Tevatron ``docid``, NeMo
    ``{"id", "text"}``); ids derived from the text cannot conflict and are skipped. Memory: 16 bytes per
    distinct (id, text) pair, compacted as it grows."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.texts: list[int] = []
        self.pairs = np.zeros((0, 2), dtype=np.int64)

    def add(self, example) -> None:
        for d in (*example.positives, *example.negatives):
            if d.id and not d.id.startswith("txt-"):
                self.ids.append(hash(d.id))
                self.texts.append(hash((d.text, d.title, d.image)))
        if len(self.ids) >= 1 << 20:
            self._compact()

    def _compact(self) -> None:
        new = np.stack([np.array(self.ids, dtype=np.int64), np.array(self.texts, dtype=np.int64)], axis=1)
        self.pairs = np.unique(np.concatenate([self.pairs, new]), axis=0)
        self.ids, self.texts = [], []

    def conflicts(self) -> int:
        """How many ids came with more than one text."""
        if self.ids:
            self._compact()
        _, counts = np.unique(self.pairs[:, 0], return_counts=True)
        return int((counts > 1).sum())


def _add(report: ValidationReport, summary: InputSummary, errors: list[DataError], path: Path) -> None:
    """Record one input's counts and problems; an input that reads cleanly but yields no example is a
    problem too (zero usable inputs never validates as OK)."""
    if (
        summary.format
        and summary.format not in ("corpus", *_OTHER_KINDS)
        and not summary.examples
        and not errors
        and not summary.interrupted
    ):
        errors = [
            DataError(f"no usable examples ({', '.join(summary.notes) or 'nothing to train on'})", path)
        ]
        summary.problems = 1
    report.inputs.append(summary)
    report.errors.extend(errors)


def _evaluation_kind(path: Path) -> str | None:
    if path_problem(path) is not None:
        return None  # a FIFO or device: never opened; the training-data reader names it
    try:
        return evaluation_file_kind(path)
    except DataError:
        return None  # unreadable: the training-data reader reports it with its line


def _summarise_evaluation_file(path: Path, kind: str, report: ValidationReport) -> InputSummary:
    """A classic NeMo evaluation file: its queries / documents counted and checked (not training data)."""
    summary = InputSummary(str(path), format=f"{kind} (evaluation)")
    try:
        if kind == "nemo-queries":
            qrels = read_query_file_qrels(path)
            summary.unique_queries = len(qrels)
        else:
            summary.corpora = {path.stem: len(read_document_file(path)[0])}
    except DataError as err:
        report.errors.append(err)
        summary.problems = 1
    return summary


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="FILE_OR_DIR",
        help="training files, directories, BEIR datasets, corpora (directories or .jsonl), TREC runs, qrels, YAML recipes",
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
