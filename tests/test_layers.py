"""The package's imports point one way, down the path data takes.

The layers, lowest first (docs/ARCHITECTURE.md draws the same order): shared helpers, data, models,
losses, retrieval, train, quickstart, cli; the seed-API modules (``densetune.compat``) sit on top and the
core never imports them. Every ``import`` counts, function-level ones included, since a lazy import that
points up still ties the lower layer to the upper one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import densetune

PACKAGE = Path(densetune.__file__).parent

# Lowest first. Modules at the package's top level that are not named here are shared helpers (layer 0).
LAYERS = ["data", "models", "losses", "retrieval", "train", "quickstart", "cli", "__main__", "compat"]


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


def test_core_never_imports_the_seed_api_modules():
    bad = [
        f"{m} -> {d}"
        for m, deps in sorted(graph().items())
        if not m.startswith("densetune.compat")
        for d in sorted(deps)
        if d.startswith("densetune.compat")
    ]
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_violation(tmp_path):
    """The walk is not vacuous: a lower layer importing an upper one is found."""
    known = {"densetune.data.x", "densetune.train.loop"}
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from densetune.train.loop import TrainRecipe\n")
    assert imports_of(f, known) == {"densetune.train.loop"}
    assert layer("densetune.train.loop") > layer("densetune.data.x")
