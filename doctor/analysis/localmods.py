"""The local modules a training script imports: its own files, not installed packages."""

from __future__ import annotations

import ast
import os
from typing import Optional

from doctor.core.source import decode_python

MAX_MODULES = 64


def _candidates(base: str, dotted: str) -> list[str]:
    rel = dotted.replace(".", os.sep)
    return [os.path.join(base, rel + ".py"), os.path.join(base, rel, "__init__.py")]


def _resolve(base: str, dotted: str) -> Optional[str]:
    for path in _candidates(base, dotted):
        if os.path.isfile(path):
            return path
    return None


def _imports(path: str, root: str) -> list[str]:
    try:
        with open(path, "rb") as fh:
            tree = ast.parse(decode_python(fh.read()).text)
    except (OSError, SyntaxError, ValueError, RecursionError):
        return []
    here = os.path.dirname(path)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                hit = _resolve(root, alias.name)
                if hit:
                    found.append(hit)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here
                for _ in range(node.level - 1):
                    base = os.path.dirname(base)
            else:
                base = root
            module = node.module or ""
            hit = _resolve(base, module) if module else None
            if hit:
                found.append(hit)
            for alias in node.names:  # `from pkg import mod` where mod is a file
                sub = _resolve(base, f"{module}.{alias.name}" if module else alias.name)
                if sub:
                    found.append(sub)
    return found


def local_modules(script: str) -> list[str]:
    """The script followed by the local files it imports (transitively), each once, at most MAX_MODULES."""
    script = os.path.abspath(script)
    root = os.path.dirname(script)
    order = [script]
    seen = {os.path.realpath(script)}
    i = 0
    while i < len(order) and len(order) < MAX_MODULES:
        for dep in _imports(order[i], root):
            real = os.path.realpath(dep)
            if real not in seen and real.startswith(os.path.realpath(root) + os.sep):
                seen.add(real)
                order.append(dep)
        i += 1
    return order[:MAX_MODULES]
