"""Building blocks for fixes: statement moves and insertions as text edits that keep formatting and comments.

Rules describe a fix as edits on the original text; ``doctor.lint.fixer`` applies them with libcst validation,
so a fix that would not parse is never written.
"""

from __future__ import annotations

import ast
from typing import Optional

from doctor.lint.context import FileContext
from doctor.core.findings import Applicability, Edit, Fix


def statement_of(ctx: FileContext, node: ast.AST) -> Optional[ast.stmt]:
    cur: Optional[ast.AST] = node
    while cur is not None and not isinstance(cur, ast.stmt):
        cur = ctx.model.parents.get(id(cur))
    return cur  # type: ignore[return-value]


def _owner_list(ctx: FileContext, stmt: ast.stmt) -> Optional[list]:
    parent = ctx.model.parents.get(id(stmt))
    if parent is None:
        parent = ctx.tree
    for field in ("body", "orelse", "finalbody", "handlers"):
        block = getattr(parent, field, None)
        if isinstance(block, list) and any(s is stmt for s in block):
            return block
    return None


def _alone_on_lines(ctx: FileContext, stmt: ast.stmt) -> bool:
    """The statement owns its lines: nothing else before it on its first line or after it on its last."""
    first = ctx.lines[stmt.lineno - 1]
    last = ctx.lines[stmt.end_lineno - 1]  # type: ignore[index]
    before = first[: ctx.char_column(stmt.lineno, stmt.col_offset)]
    after = last[ctx.char_column(stmt.end_lineno, stmt.end_col_offset) :]  # type: ignore[arg-type]
    return not before.strip() and (not after.strip() or after.strip().startswith("#"))


def indentation(ctx: FileContext, stmt: ast.stmt) -> str:
    line = ctx.lines[stmt.lineno - 1]
    return line[: len(line) - len(line.lstrip())]


def _block_text(ctx: FileContext, stmt: ast.stmt) -> list[str]:
    return ctx.lines[stmt.lineno - 1 : stmt.end_lineno]  # type: ignore[misc]


def move_after(ctx: FileContext, stmt: ast.stmt, anchor: ast.stmt, description: str) -> Optional[Fix]:
    """Move ``stmt`` to just after ``anchor``; both must be whole-line statements of the same block."""
    if not _siblings(ctx, stmt, anchor):
        return None
    if not (_alone_on_lines(ctx, stmt) and _alone_on_lines(ctx, anchor)):
        return None
    nl = ctx.source.newline
    text = nl.join(_block_text(ctx, stmt)) + nl
    delete = Edit(stmt.lineno, 0, stmt.end_lineno + 1, 0, "")  # type: ignore[operator]
    insert = Edit(anchor.end_lineno + 1, 0, anchor.end_lineno + 1, 0, text)  # type: ignore[operator]
    return Fix(description, Applicability.UNSAFE, (delete, insert))


def insert_before(ctx: FileContext, anchor: ast.stmt, code: str, description: str, applicability=Applicability.UNSAFE) -> Optional[Fix]:
    if not _alone_on_lines(ctx, anchor):
        return None
    line = anchor.lineno
    text = indentation(ctx, anchor) + code + ctx.source.newline
    return Fix(description, applicability, (Edit(line, 0, line, 0, text),))


def insert_after(ctx: FileContext, anchor: ast.stmt, code: str, description: str, applicability=Applicability.UNSAFE) -> Optional[Fix]:
    if not _alone_on_lines(ctx, anchor):
        return None
    line = anchor.end_lineno + 1  # type: ignore[operator]
    text = indentation(ctx, anchor) + code + ctx.source.newline
    return Fix(description, applicability, (Edit(line, 0, line, 0, text),))


def replace_node(ctx: FileContext, node: ast.AST, code: str, description: str, applicability=Applicability.UNSAFE) -> Optional[Fix]:
    start = ctx.char_column(node.lineno, node.col_offset)  # type: ignore[attr-defined]
    end = ctx.char_column(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
    return Fix(description, applicability, (Edit(node.lineno, start, node.end_lineno, end, code),))  # type: ignore[attr-defined]


def _siblings(ctx: FileContext, a: ast.stmt, b: ast.stmt) -> bool:
    block = _owner_list(ctx, a)
    return block is not None and any(s is b for s in block)
