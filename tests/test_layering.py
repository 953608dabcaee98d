"""The core never imports densetune.compat (the upstream systems' adapters sit on top of it, not inside it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "densetune"
# The public re-export shims: old import paths of the seeds' names, kept so saved configs load.
SHIMS = {"data/__init__.py", "data/compat.py", "data/flag_compat.py"}


def _imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # importlib.import_module("densetune.compat...") and lazy export tables name modules as strings
            if node.value.startswith("densetune.compat"):
                names.add(node.value)
    return names


def test_core_never_imports_compat():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("compat/") or rel in SHIMS:
            continue
        found = sorted(
            n
            for n in _imported_modules(ast.parse(path.read_text(), str(path)))
            if n == "densetune.compat" or n.startswith("densetune.compat.")
        )
        if found:
            offenders.append(f"{rel}: {', '.join(found)}")
    assert not offenders, "core modules import densetune.compat:\n" + "\n".join(offenders)


def test_the_check_sees_an_import(tmp_path):
    tree = ast.parse("from densetune.compat.bge_icl import DataArguments\nimport densetune.compat.nemo\n")
    assert {"densetune.compat.bge_icl", "densetune.compat.nemo"} <= _imported_modules(tree)
