"""The package's imports point one way, down the path data takes, and never form a cycle.

The layers, lowest first (docs/ARCHITECTURE.md draws the same order): shared helpers, data, models,
losses, retrieval, export, train, validate (it checks recipes too), quickstart, cli; the seed-API modules
(``densetune.compat``) sit on top and the core never imports them. Every ``import`` counts, function-level ones included, since a lazy import that
points up still ties the lower layer to the upper one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import densetune

PACKAGE = Path(densetune.__file__).parent

# Lowest first. Modules at the package's top level that are not named here are shared helpers (layer 0).
LAYERS = [
    "data",
    "models",
    "losses",
    "retrieval",
    "export",
    "train",
    "validate",
    "quickstart",
    "cli",
    "__main__",
    "compat",
]


def module_name(path: Path) -> str:
    parts = ["densetune", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The densetune modules ``path`` imports (``from pkg import submodule`` counts as the submodule)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "densetune"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "densetune":
                continue
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            names = [a for a in node.names if f"{node.module}.{a.name}" not in known]
            out |= subs | ({node.module} if names else set())
    return out & known


def layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:
        return -1  # the package's own __init__
    return LAYERS.index(parts[1]) + 1 if parts[1] in LAYERS else 0


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def test_every_import_points_down():
    up = [
        f"{m} -> {d}"
        for m, deps in sorted(graph().items())
        for d in sorted(deps)
        if layer(d) > layer(m) and layer(m) >= 0
    ]
    assert not up, "imports that point up a layer:\n" + "\n".join(up)


# Core modules that may name densetune.compat in a string: the lazy export table of ``densetune.data`` (the
# seeds' users import their names from there) and the table of moved ``_target_`` paths of saved configs.
NAME_TABLES = {"densetune.data", "densetune.config"}


def compat_names(path: Path) -> set[str]:
    """Imports of densetune.compat in ``path``, and strings naming it (``importlib.import_module(...)``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.add(node.value)
    return {n for n in out if n == "densetune.compat" or n.startswith("densetune.compat.")}


def test_core_never_imports_the_seed_api_modules():
    bad = [
        f"{name}: {', '.join(sorted(found))}"
        for name, path in sorted(modules().items())
        if not name.startswith("densetune.compat")
        for found in [compat_names(path) - (set() if name not in NAME_TABLES else compat_names(path))]
        if found
    ]
    assert not bad, "core modules that reach densetune.compat:\n" + "\n".join(bad)
    # ... and the name tables hold strings only: neither imports densetune.compat
    for name in NAME_TABLES:
        assert not {
            d for d in imports_of(modules()[name], set(modules())) if d.startswith("densetune.compat")
        }


def test_no_import_cycles():
    g = graph()
    # Tarjan's strongly connected components, iteratively (no recursion limit to hit).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(g[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_check_sees_a_violation(tmp_path):
    """The walk is not vacuous: a lower layer importing an upper one is found."""
    known = {"densetune.data.x", "densetune.train.loop"}
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from densetune.train.loop import TrainRecipe\n")
    assert imports_of(f, known) == {"densetune.train.loop"}
    assert layer("densetune.train.loop") > layer("densetune.data.x")
    f.write_text('import importlib\nimportlib.import_module("densetune.compat.bge_icl")\n')
    assert compat_names(f) == {"densetune.compat.bge_icl"}
