"""One traversal of the syntax tree per file: nodes by type, parents, and enclosing functions.

Every analysis used to walk the whole tree again for its own node type; on large files those walks were
most of the run time. Rules and analyses ask the index instead.
"""

from __future__ import annotations

import ast
from bisect import bisect_left, bisect_right
from collections import defaultdict
from operator import attrgetter
from typing import Iterator, Optional, TypeVar

T = TypeVar("T", bound=ast.AST)

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
#: Load/Store contexts and operator tokens: never asked for, and a large share of all nodes.
_CONTEXT_AND_OPERATORS = (ast.expr_context, ast.operator, ast.boolop, ast.unaryop, ast.cmpop)
_POSITION = attrgetter("lineno", "col_offset")
#: Fields that hold a name, a number, a string or a context/operator token, never a node to visit.
_PLAIN_FIELDS = frozenset({"ctx", "op", "id", "attr", "arg", "name", "module", "level", "kind", "type_comment", "conversion", "is_async"})
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}


def child_fields(t: type) -> tuple[str, ...]:
    """The fields of node type ``t`` that may hold nodes (``_fields`` less plain values: a Name or a Constant
    has none). Visiting only these skips most attribute reads of a traversal."""
    found = _CHILD_FIELDS.get(t)
    if found is None:
        found = _CHILD_FIELDS[t] = () if t is ast.Constant else tuple(f for f in t._fields if f not in _PLAIN_FIELDS)
    return found


def nodes_under(root: ast.AST) -> Iterator[ast.AST]:
    """``root`` and every node below it, like ``ast.walk`` but depth-first and without the Load/Store contexts
    and operator tokens; several times cheaper. For questions whose answer does not depend on the order (is
    there such a node, the set of such names)."""
    AST = ast.AST
    skip = _CONTEXT_AND_OPERATORS
    stack = [root]
    pop, push = stack.pop, stack.append
    fields = _CHILD_FIELDS
    while stack:
        node = pop()
        yield node
        t = type(node)
        names = fields.get(t)
        for name in names if names is not None else child_fields(t):
            value = getattr(node, name, None)
            if isinstance(value, list):
                for child in value:
                    if isinstance(child, AST) and not isinstance(child, skip):
                        push(child)
            elif isinstance(value, AST) and not isinstance(value, skip):
                push(value)


def _in_position_order(nodes: list) -> list:
    """``nodes`` sorted (stably) by line and column; a node without a position counts as line 0. The C-level key
    first (a new list, so that a failure leaves the input as it was), the Python one only when it fails."""
    try:
        return sorted(nodes, key=_POSITION)
    except (AttributeError, TypeError):
        return sorted(nodes, key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0)))


class NodeIndex:
    def __init__(self, tree: ast.AST) -> None:
        self.tree = tree
        #: The enclosing function of each node asked about (and of the nodes on its way up).
        self._enclosing: dict[int, ast.AST] = {}
        self._by_type: dict[type, list[ast.AST]] = defaultdict(list)
        self.parents: dict[int, ast.AST] = {}
        self._lines: dict[type, list[int]] = {}
        self._all: Optional[list[ast.AST]] = None
        self._merged: dict[tuple[type, ...], list[ast.AST]] = {}
        by_type = self._by_type
        parents = self.parents
        stack = [tree]
        AST = ast.AST
        skip = _CONTEXT_AND_OPERATORS
        fields = _CHILD_FIELDS
        while stack:
            node = stack.pop()
            t = type(node)
            by_type[t].append(node)
            names = fields.get(t)
            for name in names if names is not None else child_fields(t):
                value = getattr(node, name, None)
                if isinstance(value, list):
                    for child in value:
                        if isinstance(child, AST) and not isinstance(child, skip):
                            parents[id(child)] = node
                            stack.append(child)
                elif isinstance(value, AST) and not isinstance(value, skip):
                    parents[id(value)] = node
                    stack.append(value)
        # Source order (the stack visits in reverse); rules report in a stable order. Node types without a
        # position (arguments, comprehensions) keep their visiting order.
        for t, nodes in by_type.items():
            if len(nodes) < 2 or "lineno" not in t._attributes:
                continue
            try:
                nodes.sort(key=_POSITION)  # a C-level key: this sort ran a Python lambda per node
            except (AttributeError, TypeError):  # a node built by hand without a position
                nodes.sort(key=lambda n: (getattr(n, "lineno", 0) or 0, getattr(n, "col_offset", 0) or 0))

    def all(self) -> list[ast.AST]:
        """Every node of the file (a cached list: iterating it costs no tree traversal)."""
        if self._all is None:
            self._all = [n for nodes in self._by_type.values() for n in nodes]
        return self._all

    def scan(self, *types: type) -> list[ast.AST]:
        """The nodes of exactly these types in the order ``all()`` lists them: the same sequence as filtering
        ``all()`` with ``isinstance`` (node types have no subclasses), without visiting every node of the file."""
        if len(types) == 1:
            return self._by_type.get(types[0], [])
        wanted = set(types)
        return [n for t, nodes in self._by_type.items() if t in wanted for n in nodes]

    def of(self, *types: type[T]) -> list[T]:
        """All nodes of the given types, in source order."""
        if len(types) == 1:
            return self._by_type.get(types[0], [])  # type: ignore[return-value]
        cached = self._merged.get(types)
        if cached is None:  # merged and sorted once per combination of types (shared, like the lists above)
            cached = []
            for t in types:
                cached.extend(self._by_type.get(t, []))
            cached = _in_position_order(cached)
            self._merged[types] = cached
        return cached  # type: ignore[return-value]

    def has(self, t: type) -> bool:
        return bool(self._by_type.get(t))

    def parent(self, node: ast.AST) -> Optional[ast.AST]:
        return self.parents.get(id(node))

    def ancestors(self, node: ast.AST) -> Iterator[ast.AST]:
        cur = self.parents.get(id(node))
        while cur is not None:
            yield cur
            cur = self.parents.get(id(cur))

    def enclosing_function(self, node: ast.AST) -> ast.AST:
        """The nearest function around ``node`` (the module when none); memoised along the way up, since
        analyses ask it for most nodes of a file."""
        memo = self._enclosing
        parents = self.parents
        key = id(node)
        found = memo.get(key)
        if found is not None:
            return found
        chain = []  # ids of the nodes (of this tree) passed on the way up
        cur = parents.get(key)
        while cur is not None:
            chain.append(key)
            if isinstance(cur, _FUNCTIONS):
                found = cur
                break
            key = id(cur)
            hit = memo.get(key)
            if hit is not None:
                found = hit
                break
            cur = parents.get(key)
        if found is None:
            found = self.tree
        for k in chain:  # only nodes with a parent in this tree: a foreign node's id is never kept
            memo[k] = found
        return found

    def within(self, root: ast.AST, *types: type[T]) -> list[T]:
        """Nodes of ``types`` inside ``root`` (by line range, then confirmed through parents)."""
        if root is self.tree:
            return self.of(*types)
        start, end = getattr(root, "lineno", 0), getattr(root, "end_lineno", 0) or 0
        # Spans nest: a node of the root's lines lies inside the root exactly when its span does (decorators,
        # the one exception, sit on lines before the root's). Comparing spans avoids a walk up the parents.
        first = (start, getattr(root, "col_offset", None))
        last = (end, getattr(root, "end_col_offset", None))
        spans = None not in first and None not in last
        out = []
        for t in types:
            nodes = self._by_type.get(t, [])
            lines = self._lines.get(t)
            if lines is None:
                lines = self._lines[t] = [getattr(n, "lineno", 0) for n in nodes]
            for n in nodes[bisect_left(lines, start) : bisect_right(lines, end)]:
                if n is root:
                    continue
                if spans:
                    try:
                        if first <= (n.lineno, n.col_offset) and (n.end_lineno, n.end_col_offset) <= last:  # type: ignore[attr-defined,operator]
                            out.append(n)
                        continue
                    except (AttributeError, TypeError):
                        pass
                if any(a is root for a in self.ancestors(n)):
                    out.append(n)
        if len(types) > 1:
            out = _in_position_order(out)
        return out  # type: ignore[return-value]
