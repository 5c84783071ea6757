"""The conditions a statement runs under, read from the syntax around it.

``conditions(index, node)`` lists ``(test, holds)`` pairs for every ``if``/``while``/conditional expression
around ``node`` inside its function (``holds`` is False in an ``else`` arm), and for every earlier
``if test: return/raise/continue/break`` in an enclosing block (after which ``test`` is known to be false).
Rules use it to see that ``F.dropout(x, p)`` only runs under ``if self.training``, or that a zero
initialisation only runs under a flag.
"""

from __future__ import annotations

import ast
from typing import Callable, Optional

from doctor.analysis.index import NodeIndex

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.Module)
_EXITS = (ast.Return, ast.Raise, ast.Continue, ast.Break)


def conditions(index: NodeIndex, node: ast.AST) -> list[tuple[ast.AST, bool]]:
    """``(test, holds)`` for every condition that decides whether ``node`` runs, innermost first."""
    out: list[tuple[ast.AST, bool]] = []
    child = node
    for parent in index.ancestors(node):
        for block in _blocks(parent):
            if any(s is child for s in block):
                for stmt in block:
                    if stmt is child:
                        break
                    if isinstance(stmt, ast.If) and not stmt.orelse and stmt.body and isinstance(stmt.body[-1], _EXITS):
                        out.append((stmt.test, False))
        if isinstance(parent, _SCOPES):
            break
        if isinstance(parent, (ast.If, ast.While)) and child is not parent.test:
            out.append((parent.test, _in(child, parent.body)))
        elif isinstance(parent, ast.IfExp) and child is not parent.test:
            out.append((parent.test, child is parent.body))
        elif isinstance(parent, ast.BoolOp) and isinstance(parent.op, ast.And):
            # `a and f(x)`: f runs only when a holds.
            for value in parent.values:
                if value is child:
                    break
                out.append((value, True))
        child = parent
    return out


def _in(child: ast.AST, body: list[ast.stmt]) -> bool:
    return any(s is child for s in body)


def _blocks(node: ast.AST) -> list[list[ast.stmt]]:
    return [v for v in (getattr(node, f, None) for f in ("body", "orelse", "finalbody")) if isinstance(v, list)]


def implies(test: ast.AST, holds: bool, atom: Callable[[ast.AST], bool]) -> Optional[bool]:
    """What ``test`` being ``holds`` says about an atomic fact: True (the atom holds), False (it does not),
    None (nothing). ``atom`` recognises the fact's expression (``self.training``)."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return implies(test.operand, not holds, atom)
    if atom(test):
        return holds
    if isinstance(test, ast.BoolOp):
        conj = isinstance(test.op, ast.And)
        if conj == holds:  # all conjuncts hold / all disjuncts fail
            for value in test.values:
                found = implies(value, holds, atom)
                if found is not None:
                    return found
    return None


def runs_only_if(index: NodeIndex, node: ast.AST, atom: Callable[[ast.AST], bool]) -> bool:
    """Does ``node`` run only when the atom holds?"""
    return any(implies(test, holds, atom) is True for test, holds in conditions(index, node))


def is_training_flag(expr: ast.AST) -> bool:
    """``self.training``, ``model.training``, ``self.model.training``: a module's train-mode flag."""
    return isinstance(expr, ast.Attribute) and expr.attr == "training"
