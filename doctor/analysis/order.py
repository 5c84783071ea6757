"""Statement order inside one function: does one statement run after another in the same pass?

Used to read set-up code (build the model, wrap it, build the optimizer, load a checkpoint) where the order of
statements is the order of effects. Two statements are ordered when they sit in the same function, the second
comes later in the source, and they are not in exclusive arms of one condition (``if``/``else``, the cases of a
``match``, the handlers of a ``try``).
"""

from __future__ import annotations

import ast
from typing import Optional

from doctor.analysis.index import NodeIndex

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def statement(index: NodeIndex, node: ast.AST) -> Optional[ast.stmt]:
    """The statement that holds ``node`` (itself when it is one)."""
    cur: Optional[ast.AST] = node
    while cur is not None and not isinstance(cur, ast.stmt):
        cur = index.parent(cur)
    return cur  # type: ignore[return-value]


def _arm(parent: ast.AST, child: ast.AST) -> Optional[tuple[int, str]]:
    """Which exclusive arm of ``parent`` holds ``child``: ``(id(parent), field)``, or None for a non-exclusive spot."""
    if isinstance(parent, ast.If):
        if any(s is child for s in parent.body):
            return id(parent), "body"
        if any(s is child for s in parent.orelse):
            return id(parent), "orelse"
    if isinstance(parent, ast.IfExp):
        if child is parent.body:
            return id(parent), "body"
        if child is parent.orelse:
            return id(parent), "orelse"
    if isinstance(parent, (ast.Try, getattr(ast, "TryStar", ast.Try))):
        for i, h in enumerate(parent.handlers):
            if h is child:
                return id(parent), f"handler{i}"
        if any(s is child for s in parent.orelse):
            return id(parent), "handler-else"
    if type(parent).__name__ == "Match":
        for i, case in enumerate(parent.cases):  # type: ignore[attr-defined]
            if case is child:
                return id(parent), f"case{i}"
    return None


def _arms(index: NodeIndex, node: ast.AST) -> dict[int, str]:
    out: dict[int, str] = {}
    child = node
    for parent in index.ancestors(node):
        arm = _arm(parent, child)
        if arm is not None:
            out.setdefault(arm[0], arm[1])
        if isinstance(parent, _FUNCTIONS):
            break
        child = parent
    return out


def exclusive(index: NodeIndex, a: ast.AST, b: ast.AST) -> bool:
    """Do ``a`` and ``b`` sit in different arms of one condition, so that no pass runs both?"""
    arms_a = _arms(index, a)
    return any(k in arms_a and arms_a[k] != v for k, v in _arms(index, b).items())


def runs_after(index: NodeIndex, first: ast.AST, second: ast.AST) -> bool:
    """Does ``second`` run after ``first`` in the same pass: same function, later in the source, not exclusive?"""
    if index.enclosing_function(first) is not index.enclosing_function(second):
        return False
    a, b = statement(index, first), statement(index, second)
    if a is None or b is None or a is b:
        return False
    if any(x is a for x in index.ancestors(b)) or any(x is b for x in index.ancestors(a)):
        return False  # one holds the other (a loop around the other): no single order
    if (b.lineno, b.col_offset) <= (a.lineno, a.col_offset):
        return False
    return not exclusive(index, a, b)


def between(index: NodeIndex, node: ast.AST, first: ast.AST, second: ast.AST) -> bool:
    """Does ``node`` run after ``first`` and before ``second`` (all three in one function, one pass)?"""
    return runs_after(index, first, node) and runs_after(index, node, second)


__all__ = ["between", "exclusive", "runs_after", "statement"]
