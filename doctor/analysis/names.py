"""Name resolution: imports and aliases to qualified names, and receivers (``self.opt``) to stable keys."""

from __future__ import annotations

import ast
from typing import Optional


class ImportTable:
    """Maps local names to the qualified names they were imported as (``optim`` -> ``torch.optim``)."""

    def __init__(self, tree: ast.AST, index=None) -> None:
        self.aliases: dict[str, str] = {}
        #: Where each imported name comes from: (module, level, attribute or None for a module import).
        self.sources: dict[str, tuple[str, int, Optional[str]]] = {}
        #: Modules star-imported (``from utils import *``): (module, level).
        self.star: list[tuple[str, int]] = []
        nodes = index.of(ast.Import, ast.ImportFrom) if index is not None else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        self.aliases[a.asname] = a.name
                        self.sources[a.asname] = (a.name, 0, None)
                    else:
                        root = a.name.split(".")[0]
                        self.aliases.setdefault(root, root)
                        self.sources.setdefault(root, (root, 0, None))
            elif isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.name == "*":
                        self.star.append((node.module or "", node.level))
                        continue
                    local = a.asname or a.name
                    self.sources.setdefault(local, (node.module or "", node.level, a.name))
                    if node.module and not node.level:
                        self.aliases[local] = f"{node.module}.{a.name}"
                    else:
                        # Relative imports: keep the bare name so heuristics on the last component still work.
                        self.aliases.setdefault(local, f"{node.module or ''}.{a.name}".lstrip("."))

    def qualify(self, node: ast.AST) -> Optional[str]:
        """``optim.SGD`` -> ``torch.optim.SGD`` when ``optim`` was imported; else the dotted text itself."""
        dotted = dotted_name(node)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        if head in self.aliases:
            base = self.aliases[head]
            return f"{base}.{rest}" if rest else base
        return dotted



def call_arg(call: ast.Call, name: str, position: Optional[int] = None) -> Optional[ast.AST]:
    """The argument passed to ``call`` as keyword ``name`` or, when ``position`` is given, at that position
    (positional arguments after a ``*args`` are not counted)."""
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    if position is not None and position < len(call.args):
        if not any(isinstance(a, ast.Starred) for a in call.args[: position + 1]):
            return call.args[position]
    return None


def dotted_name(node: ast.AST) -> Optional[str]:
    """``a.b.c`` for a chain of attributes on a name; None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def receiver_key(node: ast.AST) -> Optional[str]:
    """A stable key for an object expression: ``opt``, ``self.optimizer``, ``self.opts[0]`` -> ``self.opts[]``.

    Subscripts collapse so that ``optimizers[0]`` and ``optimizers[i]`` are one key.
    """
    if isinstance(node, ast.Subscript):
        base = receiver_key(node.value)
        return f"{base}[]" if base else None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("module",):
        return receiver_key(node.func.value)
    if isinstance(node, ast.Attribute):
        base = receiver_key(node.value)
        if base is None:
            return None
        # `model.module` (DDP/DataParallel) is the same model for our purposes.
        return base if node.attr == "module" else f"{base}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return None


def last_part(key: Optional[str]) -> str:
    if not key:
        return ""
    return key.rstrip("[]").rsplit(".", 1)[-1]


def call_name(call: ast.Call) -> Optional[str]:
    """The called attribute or function name: ``x.y.step()`` -> ``step``."""
    f = call.func
    if isinstance(f, ast.Attribute):
        return f.attr
    if isinstance(f, ast.Name):
        return f.id
    return None
