"""The tables of one file that every analysis facet reads.

Built once per file: the shared node index, the import table, object kinds from constructors, the file's
functions and methods, and which functions (transitively) do something a training rule reads.
"""

from __future__ import annotations

import ast
from typing import Optional

from doctor.analysis import objects as K
from doctor.analysis.index import NodeIndex
from doctor.analysis.names import ImportTable

#: Attributes whose use makes a function part of the training loop's story.
RELEVANT_ATTRS = frozenset({
    "backward", "step", "zero_grad", "manual_backward", "grad", "clip_grad_norm_", "clip_grad_value_",
    "unscale_", "eval", "train", "clip_gradients", "zero_",
})


class Program:
    """The tables of one file that every analysis reads: syntax index, imports, object kinds, functions and
    methods, and which functions do training work. Facets (events, modes, values, data) take a ``Program``;
    the ``TrainingModel`` façade composes them."""

    def __init__(self, tree: ast.Module, path: Optional[str] = None) -> None:
        self.tree = tree
        self.path = path
        self.index = NodeIndex(tree)
        self.imports = ImportTable(tree, self.index)
        self.objects = K.build_objects(tree, self.imports, self.index)
        if path:
            K.resolve_local_schedulers(self.objects, path)
        self.functions: dict[str, ast.AST] = {}
        self.methods: dict[str, dict[str, ast.AST]] = {}
        self._class_of: dict[int, str] = {}
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions[node.name] = node
        for node in self.index.of(ast.ClassDef):
            table = self.methods.setdefault(node.name, {})
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    table[item.name] = item
                    self._class_of[id(item)] = node.name
        self._relevant: dict[int, bool] = {}
        #: Per object key: (bindings seen, the last binding in each function); see ``info``.
        self._bound_in: dict[str, tuple[int, dict[int, K.ObjectInfo]]] = {}
        self._methods_by_name: Optional[dict[str, list[ast.AST]]] = None

    # -- indexes ---------------------------------------------------------------------------------------
    def method(self, cls: Optional[str], name: str) -> Optional[ast.AST]:
        if cls and name in self.methods.get(cls, {}):
            return self.methods[cls][name]
        if self._methods_by_name is None:  # built once: a scan of every class per call is quadratic
            self._methods_by_name = {}
            for table in self.methods.values():
                for n, fn in table.items():
                    self._methods_by_name.setdefault(n, []).append(fn)
        found = self._methods_by_name.get(name, [])
        return found[0] if len(found) == 1 else None

    def class_of(self, fn: ast.AST) -> Optional[str]:
        return self._class_of.get(id(fn))

    def is_relevant(self, fn: ast.AST, _depth: int = 0) -> bool:
        """Does calling ``fn`` (transitively, through same-file helpers) do anything a training rule reads?"""
        key = id(fn)
        if key in self._relevant:
            return self._relevant[key]
        self._relevant[key] = False  # recursion guard
        result = False
        for node in self.index.within(fn, ast.Attribute, ast.Call):
            if isinstance(node, ast.Attribute):
                if node.attr in RELEVANT_ATTRS:
                    result = True
                    break
                continue
            if _depth < 3:
                callee = None
                if isinstance(node.func, ast.Name):
                    callee = self.functions.get(node.func.id)
                elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) and node.func.value.id == "self":
                    callee = self.method(self.class_of(fn), node.func.attr)
                if callee is not None and callee is not fn and self.is_relevant(callee, _depth + 1):
                    result = True
                    break
        self._relevant[key] = result
        return result

    @property
    def parents(self) -> dict[int, ast.AST]:
        return self.index.parents

    def nodes(self, *types: type) -> list:
        """All nodes of ``types`` in the file, in source order (one shared traversal)."""
        return self.index.of(*types)

    def enclosing_function(self, node: ast.AST) -> ast.AST:
        return self.index.enclosing_function(node)

    def info(self, key: Optional[str], at: Optional[ast.AST] = None) -> Optional[K.ObjectInfo]:
        """What ``key`` is; with ``at`` (a use site), the binding made in the same function when a local name
        is bound to different objects in different functions."""
        if key and at is not None:
            bound = self.objects.history.get(key, [])
            if len(bound) > 1:
                # One table per key, not one scan per use: a generated file binding `opt` in thousands of
                # functions would otherwise cost (uses x bindings) ancestor walks.
                seen, by_function = self._bound_in.get(key, (0, {}))
                if seen != len(bound):
                    by_function = {}
                    for i in bound:
                        by_function[id(self.enclosing_function(i.node))] = i  # the last binding wins
                    self._bound_in[key] = (len(bound), by_function)
                local = by_function.get(id(self.enclosing_function(at)))
                if local is not None:
                    return local
        return self.objects.get(key)
