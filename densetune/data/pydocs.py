"""Build the quickstart's retrieval set from text every Python installation has: the standard library.

Queries are the one-line summaries of documented functions and classes; each query's relevant passage is
the rest of the same docstring (title: the qualified name). Paragraphs of pydoc's topic help join the
corpus as distractors. Sources are parsed with ``ast`` (nothing is imported, so no module side effects)
in sorted path order, so for a given Python version the set is the same on every machine.

Train and test queries are split by a hash of the query id, and a summary that appears for two
different objects is dropped (it would make the judgement ambiguous), so no test query or its passage
text is a training query. The output is a BEIR directory: corpus.jsonl, queries.jsonl,
qrels/{train,test}.tsv.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
from collections import Counter
from pathlib import Path

# Packages whose docstrings are tests, demos or GUI internals rather than API documentation.
_SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "site-packages",
    "dist-packages",
    "lib2to3",
    "turtledemo",
    "__pycache__",
    "ensurepip",
    "tkinter",
    "distutils",
    "pydoc_data",
}
MIN_SUMMARY_WORDS = 4
MAX_SUMMARY_WORDS = 40
MIN_BODY_CHARS = 80
MAX_BODY_CHARS = 1200


def _squash(text: str) -> str:
    return " ".join(text.split())


def iter_documented_objects(stdlib: str | Path | None = None):
    """Yield ``(qualified_name, summary, body)`` for each function/class docstring with a summary line
    and a body paragraph, in a deterministic order."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            path = Path(dirpath) / filename
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            yield from _docstrings(tree, module)


def _docstrings(tree: ast.Module, module: str):
    stack: list[tuple[ast.AST, str]] = [(tree, module)]
    while stack:
        node, prefix = stack.pop(0)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child)
                if doc and "\n\n" in doc.strip():
                    summary, body = doc.strip().split("\n\n", 1)
                    summary, body = _squash(summary), _squash(body)
                    n_words = len(summary.split())
                    if MIN_SUMMARY_WORDS <= n_words <= MAX_SUMMARY_WORDS and len(body) >= MIN_BODY_CHARS:
                        yield name, summary, body[:MAX_BODY_CHARS]
                if isinstance(child, ast.ClassDef):
                    stack.append((child, name))


def _topic_paragraphs(max_paragraphs: int):
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return
    count = 0
    for topic in sorted(topics):
        for i, para in enumerate(topics[topic].split("\n\n")):
            text = _squash(para)
            if len(text) >= MIN_BODY_CHARS:
                yield f"topic-{topic}-{i}", topic, text[:MAX_BODY_CHARS]
                count += 1
                if count >= max_paragraphs:
                    return


def _split_of(query_id: str, test_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha1(query_id.encode()).digest()[:4], "big") / 2**32
    return "test" if h < test_fraction else "train"


def build_pydocs_beir(
    out_dir: str | Path,
    *,
    test_fraction: float = 0.2,
    max_distractors: int = 1500,
    max_queries: int | None = None,
) -> dict[str, int]:
    """Write the standard-library retrieval set as a BEIR directory and return its counts.

    Args:
        out_dir: directory to write (created).
        test_fraction: share of queries in the test split (by hash of the query id).
        max_distractors: pydoc topic paragraphs added to the corpus without queries.
        max_queries: keep only the first N queries (for tests), or all.

    Returns:
        Counts: docs, queries, train, test, dropped_ambiguous.
    """
    out = Path(out_dir)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    objects = list(iter_documented_objects())
    summary_counts = Counter(summary for _, summary, _ in objects)
    body_counts = Counter(body for _, _, body in objects)
    kept = [o for o in objects if summary_counts[o[1]] == 1 and body_counts[o[2]] == 1]
    if max_queries is not None:
        kept = kept[:max_queries]
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with (
        open(tmp / "corpus.jsonl", "w", encoding="utf-8") as corpus,
        open(tmp / "queries.jsonl", "w", encoding="utf-8") as queries,
    ):
        for name, summary, body in kept:
            qid, did = f"q-{name}", f"d-{name}"
            corpus.write(json.dumps({"_id": did, "title": name, "text": body}) + "\n")
            queries.write(json.dumps({"_id": qid, "text": summary}) + "\n")
            splits[_split_of(qid, test_fraction)].append((qid, did))
        n_distractors = 0
        for did, title, text in _topic_paragraphs(max_distractors):
            corpus.write(json.dumps({"_id": did, "title": title, "text": text}) + "\n")
            n_distractors += 1
    (tmp / "qrels").mkdir(exist_ok=True)
    for split, pairs in splits.items():
        with open(tmp / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid, did in pairs:
                f.write(f"{qid}\t{did}\t1\n")
    for name in ("corpus.jsonl", "queries.jsonl"):
        os.replace(tmp / name, out / name)
    for split in splits:
        os.replace(tmp / "qrels" / f"{split}.tsv", out / "qrels" / f"{split}.tsv")
    (tmp / "qrels").rmdir()
    tmp.rmdir()
    counts = {
        "docs": len(kept) + n_distractors,
        "queries": len(kept),
        "train": len(splits["train"]),
        "test": len(splits["test"]),
        "dropped_ambiguous": len(objects) - len(kept) if max_queries is None else 0,
    }
    (out / "pydocs.json").write_text(
        json.dumps({"python": sys.version.split()[0], **counts}, indent=2) + "\n", encoding="utf-8"
    )
    return counts
