"""The house rules of doctor's own code: imports point one way, no circles, no private names across modules.

The layers (docs/architecture.md): ``core`` is used by everyone; ``analysis`` reads programs; ``lint`` runs
rules over files; ``probe`` runs scripts; ``report`` renders what lint and probe produce; ``cli`` wires it all.
``rules/static`` are lint rules, ``rules/runtime`` are probe checks.
"""

from __future__ import annotations

import ast
import os
from typing import Iterator

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: For each package: the doctor packages its modules may import (besides their own).
ALLOWED = {
    "doctor.core": set(),
    "doctor.analysis": {"doctor.core"},
    "doctor.lint": {"doctor.core", "doctor.analysis"},
    "doctor.probe": {"doctor.core"},
    "doctor.report": {"doctor.core", "doctor.lint", "doctor.probe"},
    "doctor.cli": {"doctor.core", "doctor.analysis", "doctor.lint", "doctor.probe", "doctor.report", "doctor.catalog"},
    "doctor.catalog": {"doctor.core", "doctor.lint", "doctor.probe"},
    "doctor.rules.static": {"doctor.core", "doctor.analysis", "doctor.lint"},
    "doctor.rules.runtime": {"doctor.core", "doctor.probe"},
}


def _modules() -> dict[str, str]:
    """Module name -> path, for every module of ``doctor/`` and ``rules/`` (installed as ``doctor.rules``)."""
    out: dict[str, str] = {}
    for folder, package in (("doctor", "doctor"), ("rules", "doctor.rules")):
        top = os.path.join(REPO, folder)
        for dirpath, _dirs, files in os.walk(top):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), top)[:-3].replace(os.sep, ".")
                    rel = rel.removesuffix("__init__").rstrip(".")
                    out[package + ("." + rel if rel else "")] = os.path.join(dirpath, f)
    return out


MODULES = _modules()
TREES = {name: ast.parse(open(path, encoding="utf-8").read()) for name, path in MODULES.items()}


def _imports(name: str) -> Iterator[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every doctor import of a module, lazy and
    type-checking-only imports included."""
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "doctor":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield (full if full in MODULES else node.module), ("" if full in MODULES else alias.name), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "doctor":
                    yield alias.name, "", node.lineno


def _package(module: str) -> str:
    for pkg in sorted(ALLOWED, key=len, reverse=True):
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    return module


def test_every_module_is_in_a_layer():
    loose = [m for m in MODULES if _package(m) not in ALLOWED and m not in ("doctor", "doctor.__main__", "doctor.rules")]
    assert not loose, f"modules outside the documented folders: {loose}"


def test_imports_point_one_way():
    wrong = []
    for name in MODULES:
        pkg = _package(name)
        if pkg not in ALLOWED:
            continue
        for target, _, line in _imports(name):
            tpkg = _package(target)
            if target == "doctor" or tpkg == pkg or tpkg in ALLOWED[pkg]:
                continue
            wrong.append(f"{MODULES[name]}:{line}: {name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    graph = {name: {t for t, _, _ in _imports(name) if t in MODULES and t != name} for name in MODULES}
    # Tarjan's strongly connected components.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_no_private_name_imported_from_another_module():
    private = [
        f"{MODULES[name]}:{line}: {what} from {target}"
        for name in MODULES
        for target, what, line in _imports(name)
        if what.startswith("_") and not what.startswith("__")
    ]
    assert not private, "\n".join(private)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_placeholder_conditions(name):
    bad = [
        n.lineno for n in ast.walk(TREES[name])
        if isinstance(n, ast.If) and isinstance(n.test, ast.Constant) and n.test.value in (True, 1)
    ]
    assert not bad, f"{MODULES[name]}: `if True:` at lines {bad}"
