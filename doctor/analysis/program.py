"""The tables of one file that every analysis facet reads.

Built once per file: the shared node index, the import table, object kinds from constructors, the file's
functions and methods, and which functions (transitively) do something a training rule reads.
"""

from __future__ import annotations

import ast
import re
from functools import cached_property
from typing import TYPE_CHECKING, Optional, Union

from doctor.analysis import objects as K
from doctor.analysis.index import NodeIndex
from doctor.analysis.names import ImportTable, dotted_name, receiver_key

if TYPE_CHECKING:
    from doctor.analysis.project import Project

Definition = Union[ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef]

#: Attributes whose use makes a function part of the training loop's story.
RELEVANT_ATTRS = frozenset({
    "backward", "step", "zero_grad", "manual_backward", "grad", "clip_grad_norm_", "clip_grad_value_",
    "unscale_", "eval", "train", "clip_gradients", "zero_",
})


class Program:
    """The tables of one file that every analysis reads: syntax index, imports, object kinds, functions and
    methods, and which functions do training work. Facets (events, modes, values, data) take a ``Program``;
    the ``TrainingModel`` façade composes them."""

    def __init__(self, tree: ast.Module, path: Optional[str] = None, project: Optional["Project"] = None) -> None:
        self.tree = tree
        self.path = path
        self._project = project
        self.index = NodeIndex(tree)
        self.imports = ImportTable(tree, self.index)
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
        #: Per object key: (bindings seen, the position in the history of the last binding in each function).
        self._bound_in: dict[str, tuple[int, dict[int, int]]] = {}
        self._methods_by_name: Optional[dict[str, list[ast.AST]]] = None
        self._calls_by: Optional[dict[str, dict[str, list[ast.Call]]]] = None
        self._class_kinds: dict[int, tuple[ast.ClassDef, Optional[str]]] = {}
        self._iteration_hooks: Optional[list[ast.Call]] = None
        self.classes: dict[str, ast.ClassDef] = {}
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                self.classes[node.name] = node
        self._resolved: dict[str, Optional[tuple["Program", Definition]]] = {}
        self._memo: dict[tuple, object] = {}

    @cached_property
    def objects(self) -> K.ObjectTable:
        """Object kinds from constructors (built on first use: the files a check only reads a class or a
        function from never pay for it)."""
        table = K.build_objects(self.tree, self.imports, self.index)
        if self.path:
            K.resolve_local_schedulers(table, self.path)
        table.resolver = self._verify_object
        return table

    def calls_to(self, name: str) -> list[ast.Call]:
        """Calls in this file whose callee is named ``name`` (``name(...)``, ``x.name(...)``)."""
        return self.calls_named(name, "any")

    # -- objects whose constructor we can read -----------------------------------------------------------
    def _verify_object(self, info: K.ObjectInfo) -> Optional[K.ObjectInfo]:
        """What an object built by a function or class of the project really is (its definition decides,
        not its name): a class by its bases, a factory by what it returns."""
        call = info.node
        if not isinstance(call, ast.Call):
            return None
        found = self.resolve(call.func)
        func = call.func
        if found is None and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
            owner = self.class_of_receiver(func.value, call)
            found = owner[0].class_method(owner[1], func.attr) if owner is not None else None  # type: ignore[assignment]
        if found is None:
            return None
        program, definition = found
        if isinstance(definition, ast.ClassDef):
            kind = program.class_kind(definition)
            return K.ObjectInfo(
                kind or K.OTHER, ctor=info.ctor, node=call, optimizer=info.optimizer, param_roots=info.param_roots,
                torch_subclass=kind is not None, source_seen=True,
            )
        kinds = set()
        for ret in program.index.within(definition, ast.Return):
            if ret.value is None or program.enclosing_function(ret) is not definition:
                continue
            value = K.unwrap_moves(ret.value)
            if isinstance(value, ast.Call):
                sub = K.info_of(value, program.objects, program.imports)
                sub = program.objects.verified("", sub) if sub is not None and sub.unverified and sub.node is not call else sub
                kinds.add(sub.kind if sub is not None else None)
            elif isinstance(value, (ast.Name, ast.Attribute)):
                # What the returned variable was built as (never what its name says).
                sub = program.objects.get(receiver_key(value)) if receiver_key(value) else None
                kinds.add(sub.kind if sub is not None and not sub.from_name_only else None)
            else:
                kinds.add(K.OTHER)
        kinds.discard(K.PENDING)
        if len(kinds) == 1 and None not in kinds:
            kind = kinds.pop()
            return K.ObjectInfo(kind, ctor=info.ctor, node=call, optimizer=info.optimizer, param_roots=info.param_roots, source_seen=True, torch_subclass=True)
        # Returns we cannot classify: the name-based guess stands only if the body builds such an object at all.
        builds = any(
            sub is not None and sub.kind == info.kind and not sub.unverified
            for c in program.index.within(definition, ast.Call)
            for sub in [K.info_of(c, program.objects, program.imports)]
        )
        return K.ObjectInfo(info.kind if builds else K.OTHER, ctor=info.ctor, node=call, source_seen=True)

    # -- the project around the file -------------------------------------------------------------------
    @property
    def project(self) -> Optional["Project"]:
        """The local modules around this file (None for a snippet without a path)."""
        if self._project is None and self.path:
            from doctor.analysis.project import Project

            self._project = Project.for_file(self.path, type(self))
        return self._project

    def owns(self, node: ast.AST) -> bool:
        """Is ``node`` part of this file's tree?"""
        return node is self.tree or id(node) in self.index.parents

    def resolve_name(self, name: str, _depth: int = 0) -> Optional[tuple["Program", Definition]]:
        """The function or class a module-level name refers to: defined here, or imported from a local module
        (through re-exports in a package ``__init__``). None for anything else (installed packages)."""
        if name in self._resolved:
            return self._resolved[name]
        self._resolved[name] = None  # recursion guard
        found: Optional[tuple[Program, Definition]] = None
        if name in self.functions:
            found = (self, self.functions[name])  # type: ignore[assignment]
        elif name in self.classes:
            found = (self, self.classes[name])
        elif _depth < 6 and self.project is not None and self.path:
            source = self.imports.sources.get(name)
            if source is not None and source[2] is not None:
                module, level, attr = source
                other = self._module(module, level)
                if other is not None:
                    found = other.resolve_name(attr, _depth + 1)
            if found is None:
                for module, level in self.imports.star:
                    other = self._module(module, level)
                    if other is not None:
                        found = other.resolve_name(name, _depth + 1)
                        if found is not None:
                            break
        self._resolved[name] = found
        return found

    def module_may_train(self, name: str) -> bool:
        """Could the local module an imported name comes from do training work (read its bytes, not its tree)?"""
        source = self.imports.sources.get(name)
        project = self.project
        if source is None or project is None or not self.path:
            return False
        module, level, _ = source
        path = project.module_file(self.path, module, level)
        return path is not None and project.may_train(path)

    def _module(self, module: str, level: int) -> Optional["Program"]:
        project = self.project
        if project is None or not self.path:
            return None
        path = project.module_file(self.path, module, level)
        if path is None or _same_path(path, self.path):
            return None
        return project.program(path)

    def resolve(self, expr: ast.AST) -> Optional[tuple["Program", Definition]]:
        """The function or class an expression names: ``Net``, ``models.Net``, ``misc.NativeScaler``."""
        if isinstance(expr, ast.Name):
            return self.resolve_name(expr.id)
        dotted = dotted_name(expr)
        if dotted is None or "." not in dotted:
            return None
        head, _, rest = dotted.partition(".")
        source = self.imports.sources.get(head)
        if source is None or "." in rest:
            # `pkg.mod.Name`: resolve the module part first.
            if source is None:
                return None
            module, level, attr = source
            mod_path = ".".join(p for p in (module, attr, rest.rsplit(".", 1)[0]) if p)
            other = self._module(mod_path, level)
            return other.resolve_name(rest.rsplit(".", 1)[1]) if other is not None else None
        module, level, attr = source
        other = self._module(f"{module}.{attr}" if attr else module, level) if (attr or module) else None
        return other.resolve_name(rest) if other is not None else None

    def resolve_class(self, expr: ast.AST) -> Optional[tuple["Program", ast.ClassDef]]:
        found = self.resolve(expr)
        if found is not None and isinstance(found[1], ast.ClassDef):
            return found  # type: ignore[return-value]
        return None

    def class_bases(self, cls: ast.ClassDef, _depth: int = 0) -> list[tuple["Program", ast.ClassDef]]:
        """``cls`` (of this file) and its readable base classes, nearest first."""
        out: list[tuple[Program, ast.ClassDef]] = [(self, cls)]
        if _depth > 6:
            return out
        for base in cls.bases:
            found = self.resolve_class(base)
            if found is not None and not same_definition(found[0], found[1], self, cls):
                out.extend(found[0].class_bases(found[1], _depth + 1))
        return out

    def class_method(self, cls: ast.ClassDef, name: str) -> Optional[tuple["Program", ast.AST]]:
        """Method ``name`` of ``cls`` or of the nearest readable base that defines it."""
        for program, klass in self.class_bases(cls):
            for item in klass.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == name:
                    return program, item
        return None

    def class_kind(self, cls: ast.ClassDef) -> Optional[str]:
        """What instances of ``cls`` are, from its bases (through local modules): a model, an optimizer, a
        scheduler; None when no base says so. (Once per class: every object built from it asks.)"""
        hit = self._class_kinds.get(id(cls))
        if hit is not None and hit[0] is cls:
            return hit[1]
        kind = self._class_kind(cls)
        self._class_kinds[id(cls)] = (cls, kind)
        return kind

    def _class_kind(self, cls: ast.ClassDef) -> Optional[str]:
        for program, klass in self.class_bases(cls):
            for base in klass.bases:
                q = program.imports.qualify(base) or ""
                kind = K.kind_of_base(q)
                if kind is not None:
                    return kind
        return None

    # -- indexes ---------------------------------------------------------------------------------------
    def calls_named(self, name: str, how: str = "any") -> list[ast.Call]:
        """This file's calls of ``name``, in source order: ``how`` = "name" (``name(...)``), "attr"
        (``x.name(...)``) or "any". One table for the file: a scan of every call per function looked up made
        big files quadratic."""
        if self._calls_by is None:
            tables: dict[str, dict[str, list[ast.Call]]] = {"name": {}, "attr": {}, "any": {}}
            for call in self.index.of(ast.Call):
                f = call.func
                key = "name" if isinstance(f, ast.Name) else "attr" if isinstance(f, ast.Attribute) else None
                if key is not None:
                    called = f.id if key == "name" else f.attr  # type: ignore[union-attr]
                    tables[key].setdefault(called, []).append(call)
                    tables["any"].setdefault(called, []).append(call)
            self._calls_by = tables
        return self._calls_by[how].get(name, [])

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
                owner: Program = self
                callee = None
                f = node.func
                if isinstance(f, ast.Name):
                    callee = self.functions.get(f.id)
                    if callee is None and fn is not self.tree:
                        # A closure of an enclosing function, or a name bound to one (`step = amp_step`).
                        options = self._closures(fn).get(f.id, [])
                        if any(o is not fn and self.is_relevant(o, _depth + 1) for o in options):
                            result = True
                            break
                    if callee is None and f.id in self.imports.sources and self.module_may_train(f.id):
                        found = self.resolve_name(f.id)  # a function of a local module
                        if found is not None and not isinstance(found[1], ast.ClassDef):
                            owner, callee = found
                elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self":
                    callee = self.method(self.class_of(fn), f.attr)
                elif isinstance(f, ast.Attribute) and (f.attr in self.methods_defined or isinstance(f.value, ast.Name) and f.value.id in self._constructed):
                    # `agent.finish_episode()`: a method of an object whose class we can read (built here: a
                    # parameter's class would need its callers, which this quick question does not read).
                    receiver = receiver_key(f.value)
                    cls = None if receiver in parameters(fn) else self.class_of_receiver(f.value, node)
                    found = cls[0].class_method(cls[1], f.attr) if cls is not None else None
                    if found is not None:
                        owner, callee = found
                if callee is not None and callee is not fn and owner.is_relevant(callee, _depth + 1):
                    result = True
                    break
        self._relevant[key] = result
        return result

    def _closures(self, fn: ast.AST) -> dict[str, list[ast.AST]]:
        """Functions defined in ``fn`` and in the functions around it, by name, and names bound to them."""
        out: dict[str, list[ast.AST]] = {}
        cur: ast.AST = fn
        while cur is not self.tree:
            body = getattr(cur, "body", [])
            defs = {s.name: s for s in body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))}
            for name, d in defs.items():
                out.setdefault(name, []).append(d)
            for node in ast.walk(cur) if cur is not fn else ():
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    values = [node.value.body, node.value.orelse] if isinstance(node.value, ast.IfExp) else [node.value]
                    for v in values:
                        if isinstance(v, ast.Name) and v.id in defs:
                            out.setdefault(node.targets[0].id, []).append(defs[v.id])
            cur = self.enclosing_function(cur)
        return out

    @cached_property
    def methods_defined(self) -> frozenset[str]:
        """Names of the methods the classes of this file define."""
        return frozenset(name for table in self.methods.values() for name in table)

    @cached_property
    def _constructed(self) -> frozenset[str]:
        """Names bound to a constructor we have not classified (maybe a class of a local module)."""
        return frozenset(k for k, i in self.objects.objects.items() if i.kind == K.PENDING and "." not in k)

    @property
    def parents(self) -> dict[int, ast.AST]:
        return self.index.parents

    def nodes(self, *types: type) -> list:
        """All nodes of ``types`` in the file, in source order (one shared traversal)."""
        return self.index.of(*types)

    def enclosing_function(self, node: ast.AST) -> ast.AST:
        return self.index.enclosing_function(node)

    def info(self, key: Optional[str], at: Optional[ast.AST] = None, _depth: int = 0) -> Optional[K.ObjectInfo]:
        """What ``key`` is; with ``at`` (a use site), the binding made in the same function when a local name
        is bound to different objects in different functions, and for a parameter of that function what its
        callers pass (never another function's binding of the same name)."""
        if key and at is not None:
            fn = self.enclosing_function(at)
            head = key.split(".", 1)[0].rstrip("[]")
            if head == key and fn is not self.tree and head in parameters(fn) and not self.rebinds(fn, head):
                return self._argument_info(fn, head, _depth) if _depth < 3 else None
            bound = self.objects.history.get(key, [])
            if len(bound) > 1:
                # One table per key, not one scan per use: a generated file binding `opt` in thousands of
                # functions would otherwise cost (uses x bindings) ancestor walks.
                local = self._last_binding_in(key, bound, fn)
                if local is not None:
                    return self.objects.verified(key, bound[local])
        return self.objects.get(key)

    def _argument_info(self, fn: ast.AST, param: str, depth: int) -> Optional[K.ObjectInfo]:
        """The object every visible call of ``fn`` passes as ``param``, when they agree; else None."""
        found: list[K.ObjectInfo] = []
        for program, value in self.argument_values(fn, param):
            info = K.info_of(value, program.objects, program.imports)
            key = receiver_key(value)
            if key is not None:
                info = program.info(key, at=value, _depth=depth + 1)
            elif info is not None and info.unverified:
                info = program.objects.verified("", info)
            if info is None:
                return None
            found.append(info)
        if not found or len({(i.kind, i.ctor) for i in found}) != 1:
            return None
        return found[0]

    def rebinds(self, fn: ast.AST, name: str) -> bool:
        """Does ``fn``'s own body assign ``name`` (so a parameter of that name no longer holds the argument)?"""
        key = ("stores", id(fn))
        hit = self._memo.get(key)
        if hit is None or hit[0] is not fn:  # type: ignore[index]
            # The names fn's own body stores, collected once per function (asked per parameter and call).
            stored = {node.id for node in self.index.within(fn, ast.Name)
                      if isinstance(node.ctx, ast.Store) and self.enclosing_function(node) is fn}
            hit = self._memo[key] = (fn, stored)
        return name in hit[1]  # type: ignore[index]

    # -- call sites ------------------------------------------------------------------------------------
    def call_sites(self, fn: ast.AST, *, by_method_name: bool = False, dispatch: bool = False) -> list[tuple["Program", ast.Call]]:
        key = ("sites", id(fn), by_method_name, dispatch)
        if key not in self._memo:
            self._memo[key] = []  # recursion guard
            self._memo[key] = self._call_sites(fn, by_method_name, dispatch)
        return self._memo[key]  # type: ignore[return-value]

    def _call_sites(self, fn: ast.AST, by_method_name: bool, dispatch: bool) -> list[tuple["Program", ast.Call]]:
        """The calls of function or method ``fn`` (of this file) that we can see: in this file and, through
        imports, in the project's other files. Methods are matched through ``self`` and through objects
        whose class we can read; ``by_method_name`` also takes calls on receivers of unknown class in the
        same project (a registry-built model calling ``optimize_parameters``)."""
        name = getattr(fn, "name", None)
        if not name:
            return []
        out: list[tuple[Program, ast.Call]] = []
        cls_name = self.class_of(fn)
        outer = self.enclosing_function(fn)
        if cls_name is None and outer is not self.tree:
            # A nested function: called in the function that defines it.
            for call in self.index.within(outer, ast.Call):
                if isinstance(call.func, ast.Name) and call.func.id == name:
                    out.append((self, call))
            return out
        if cls_name is None:
            for call in self.calls_named(name, "name"):
                out.append((self, call))
            if self.project is not None:
                for site in self.project.calls_named(name, skip=self.path):
                    if site.program is self or _same_path(site.program.path or "", self.path or ""):
                        continue
                    found = site.program.resolve(site.call.func)
                    if found is not None and same_definition(found[0], found[1], self, fn):
                        out.append((site.program, site.call))
            return out
        cls = self.classes.get(cls_name) or next((c for c in self.index.of(ast.ClassDef) if c.name == cls_name), None)
        if cls is None:
            return out
        programs = [self]
        if self.project is not None:
            programs.extend(
                p for p in {id(s.program): s.program for s in self.project.calls_named(name, skip=self.path)}.values()
                if p is not self and not _same_path(p.path or "", self.path or "")
            )
        for program in programs:
            for call in program.calls_named(name, "attr"):
                f = call.func
                owner = program.class_of_receiver(f.value, call)
                if owner is not None:
                    if any(same_definition(p, k, self, cls) for p, k in owner[0].class_bases(owner[1])):
                        out.append((program, call))
                    elif dispatch and isinstance(f.value, ast.Name) and f.value.id == "self" and any(
                        same_definition(p, k, owner[0], owner[1]) for p, k in self.class_bases(cls)
                    ):
                        out.append((program, call))  # a base class calls `self.name()`: the override runs
                elif by_method_name and not (isinstance(f.value, ast.Name) and f.value.id in ("self", "cls", "super")):
                    out.append((program, call))
        return out

    def class_of_receiver(self, expr: ast.AST, at: ast.AST, _depth: int = 0) -> Optional[tuple["Program", ast.ClassDef]]:
        key = ("receiver", id(expr), id(at))
        if key not in self._memo:
            self._memo[key] = None  # recursion guard
            self._memo[key] = self._class_of_receiver(expr, at, _depth)
        return self._memo[key]  # type: ignore[return-value]

    def _class_of_receiver(self, expr: ast.AST, at: ast.AST, _depth: int = 0) -> Optional[tuple["Program", ast.ClassDef]]:
        """The readable class of the object ``expr`` (``self``, a name or ``self.x`` bound to ``Cls(...)``)."""
        if isinstance(expr, ast.Name) and expr.id == "self":
            cls_name = self.class_of(self.enclosing_function(at))
            cls = self.classes.get(cls_name or "") or next((c for c in self.index.of(ast.ClassDef) if c.name == cls_name), None)
            return (self, cls) if cls is not None else None
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "super":
            return None
        key = receiver_key(expr)
        if key is None:
            return None
        fn = self.enclosing_function(at)
        if isinstance(expr, ast.Name) and fn is not self.tree and key in parameters(fn) and not self.rebinds(fn, key):
            method = at.func.attr if isinstance(at, ast.Call) and isinstance(at.func, ast.Attribute) else None
            if method in _COMMON_METHOD_NAMES or key in _DATA_NAMES:
                return None  # `model.parameters()`, `batch.items()`: no project class to find through the callers
            # A parameter: the class of what every visible caller passes (never another function's binding).
            found = None
            for program, value in self.argument_values(fn, key) if _depth < 3 else []:
                cls = program.class_of_receiver(value, value, _depth + 1)
                if cls is None or (found is not None and not same_definition(found[0], found[1], cls[0], cls[1])):
                    return None
                found = cls
            return found
        ctor = self.constructor_of(key, at)
        if ctor is None:
            return None
        if isinstance(ctor.func, ast.Name) and ctor.func.id in self.imports.sources and not self.module_may_train(ctor.func.id):
            return None  # a class of a module that never trains: nothing of it would be followed anyway
        return self.resolve_class(ctor.func)

    def _last_binding_in(self, key: str, bound: list, fn: ast.AST) -> Optional[int]:
        """The position in ``bound`` (the history of ``key``) of its last binding made in ``fn``, or None.

        One table per key, not one scan per use: a generated file binding `opt` in thousands of functions would
        otherwise cost (uses x bindings) ancestor walks. Positions, not the entries: verifying an object
        replaces its entry in the history."""
        seen, by_function = self._bound_in.get(key, (0, {}))
        if seen != len(bound):
            by_function = {}
            for n, i in enumerate(bound):
                by_function[id(self.enclosing_function(i.node))] = n  # the last binding wins
            self._bound_in[key] = (len(bound), by_function)
        return by_function.get(id(fn))

    def constructor_of(self, key: str, at: Optional[ast.AST] = None) -> Optional[ast.Call]:
        """The call that built the object ``key`` holds (the binding in ``at``'s function first)."""
        bound = self.objects.history.get(key, [])
        if at is not None and len(bound) > 1:
            local = self._last_binding_in(key, bound, self.enclosing_function(at))
            if local is not None:
                bound = [bound[local]]
        info = bound[-1] if bound else self.objects.objects.get(key)
        node = info.node if info is not None else None
        return K.unwrap_moves(node) if isinstance(node, ast.Call) else None  # type: ignore[return-value]

    def runs_per_iteration(self, fn: ast.AST) -> Optional[str]:
        """Why ``fn`` (a function without a loop of its own) runs once per training iteration although no loop
        of this file calls it: a framework that calls it per iteration (ignite's ``Engine(fn)``), a base class
        whose loop calls the override (``TrainerBase.train`` -> ``self.run_step()``), or a loop in another file
        of the project (``model.optimize_parameters(it)`` on a registry-built model). None otherwise, and None
        when that loop clears gradients itself."""
        name = getattr(fn, "name", None)
        if not name:
            return None
        if self._iteration_hooks is None:  # the calls that can make a function run per iteration, found once
            self._iteration_hooks = [
                c for c in self.index.of(ast.Call)
                if (self.imports.qualify(c.func) or "").rsplit(".", 1)[-1] in _PER_ITERATION_ENGINES | {"add_event_handler"}
            ]
        for call in self._iteration_hooks:
            callee = (self.imports.qualify(call.func) or "").rsplit(".", 1)[-1]
            if callee in _PER_ITERATION_ENGINES and call.args and isinstance(call.args[0], ast.Name) and call.args[0].id == name:
                return f"`{callee}` (line {call.lineno}) calls once per iteration"
            if callee == "add_event_handler" and len(call.args) > 1 and isinstance(call.args[1], ast.Name) and call.args[1].id == name:
                if _repeating_event(call.args[0]):
                    return f"runs on every `{ast.unparse(call.args[0])}` (line {call.lineno})"
        for d in getattr(fn, "decorator_list", ()):
            # `@trainer.on(Events.EPOCH_COMPLETED)`: an ignite handler run on every such event.
            if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "on" and d.args and _repeating_event(d.args[0]):
                return f"runs on every `{ast.unparse(d.args[0])}` (line {d.lineno})"
        by_name = name not in _COMMON_METHOD_NAMES and self.class_of(fn) is not None
        for program, call in self.call_sites(fn, by_method_name=by_name, dispatch=True):
            if program is self and self._inlined_here(fn, call):
                continue  # a loop of this file calls it directly: the loop's own stream covers it
            loop = _enclosing_loop(program, call)
            if loop is None or _clears_in(loop):
                continue
            place = "line " if program is self else f"{_short(program.path)}:"
            f = call.func
            if by_name and isinstance(f, ast.Attribute) and program.class_of_receiver(f.value, call) is None:
                # The receiver's class is unknown (built by a registry or a factory): matched by the method's name.
                return (
                    f"runs once per iteration of the loop at {place}{loop.lineno} (inferred: `{_short_call(call)}` at "
                    f"{place}{call.lineno} is taken to call it, by its name)"
                )
            return f"runs once per iteration of the loop at {place}{loop.lineno}"
        return None

    def _inlined_here(self, fn: ast.AST, call: ast.Call) -> bool:
        """Does the stream builder inline ``call`` (a same-file call it resolves statically) into its caller?"""
        f = call.func
        if isinstance(f, ast.Name):
            return True
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self":
            owner = self.class_of_receiver(f.value, call)
            return owner is not None and any(k.name == self.class_of(fn) for _, k in owner[0].class_bases(owner[1]))
        return isinstance(f, ast.Attribute) and self.class_of_receiver(f.value, call) is not None

    def argument_values(self, fn: ast.AST, param: str) -> list[tuple["Program", ast.AST]]:
        key = ("args", id(fn), param)
        if key not in self._memo:
            self._memo[key] = []  # recursion guard
            self._memo[key] = self._argument_values(fn, param)
        return self._memo[key]  # type: ignore[return-value]

    def _argument_values(self, fn: ast.AST, param: str) -> list[tuple["Program", ast.AST]]:
        """What the visible calls of ``fn`` pass for ``param`` (positionally, by keyword or by default)."""
        args = fn.args  # type: ignore[attr-defined]
        positional = [a.arg for a in args.posonlyargs + args.args]
        method = self.class_of(fn) is not None and positional[:1] in (["self"], ["cls"])
        if method:
            positional = positional[1:]
        defaults = dict(zip([a.arg for a in args.posonlyargs + args.args][-len(args.defaults):] if args.defaults else [], args.defaults))
        defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
        out: list[tuple[Program, ast.AST]] = []
        for program, call in self.call_sites(fn):
            value: Optional[ast.AST] = None
            if any(isinstance(a, ast.Starred) for a in call.args) or any(kw.arg is None for kw in call.keywords):
                return []  # `f(*args, **kwargs)`: we cannot tell what lands where
            for kw in call.keywords:
                if kw.arg == param:
                    value = kw.value
            if value is None and param in positional:
                i = positional.index(param)
                if i < len(call.args):
                    value = call.args[i]
            if value is None and param in defaults:
                program, value = self, defaults[param]
            if value is None:
                return []
            out.append((program, value))
        return out


def _same_path(a: str, b: str) -> bool:
    import os

    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def parameters(fn: ast.AST) -> set[str]:
    args = getattr(fn, "args", None)
    if args is None:
        return set()
    every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
    return {a.arg for a in every}


#: Framework objects that call a function once per training iteration: ignite's engines.
_PER_ITERATION_ENGINES = {"Engine", "DeterministicEngine"}
#: Method names too common to link a call to a definition by name alone, or to resolve a parameter's class
#: through its callers for (torch's own methods on modules, tensors and containers).
_COMMON_METHOD_NAMES = {
    "step", "update", "forward", "__call__", "train", "run", "backward", "zero_grad", "optimize", "fit", "__init__",
    "apply", "eval", "call", "process", "execute", "compute", "get", "set", "save", "load",
    "parameters", "named_parameters", "state_dict", "load_state_dict", "to", "cuda", "cpu", "modules",
    "named_modules", "children", "items", "keys", "values", "append", "extend", "pop", "size", "view", "item",
    "detach", "float", "half", "numel", "reshape", "format", "join", "split", "copy_", "add_", "mul_",
}
#: Parameter names that hold data, not an object of a project class.
_DATA_NAMES = {"batch", "x", "y", "inputs", "targets", "labels", "data", "input", "target", "sample", "samples", "images", "imgs", "loss", "logits", "outputs", "output", "tensor", "mask"}


def _repeating_event(event: ast.AST) -> bool:
    """An ignite event that fires repeatedly (``EPOCH_COMPLETED``, ``ITERATION_COMPLETED(every=10)``, a custom
    ``EPISODE_COMPLETED``), not ``STARTED``/``COMPLETED``, which fire once per run."""
    text = ast.unparse(event)
    last = re.split(r"[.(]", text.split("(")[0])[-1] if "(" in text else text.rsplit(".", 1)[-1]
    return last not in ("STARTED", "COMPLETED", "EXCEPTION_RAISED", "TERMINATE") and bool(re.search(r"[A-Z]", last))


def _enclosing_loop(program: "Program", node: ast.AST) -> Optional[ast.AST]:
    for anc in program.index.ancestors(node):
        if isinstance(anc, (ast.For, ast.AsyncFor, ast.While)):
            return anc
        if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            return None
    return None


def _clears_in(loop: ast.AST) -> bool:
    """Does the loop body clear gradients anywhere (``zero_grad()``, ``p.grad = None``, ``grad.zero_()``)?"""
    for node in ast.walk(loop):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if "zero_grad" in name or (name == "zero_" and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Attribute) and f.value.attr == "grad"):
                return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr == "grad" for t in node.targets):
            return True
    return False


def _short(path: Optional[str]) -> str:
    import os

    return os.path.basename(path or "")


def same_definition(a_program: "Program", a: ast.AST, b_program: "Program", b: ast.AST) -> bool:
    """The same function or class, even when its file was parsed twice (a project file read again)."""
    if a is b:
        return True
    return (
        getattr(a, "name", None) == getattr(b, "name", None)
        and getattr(a, "lineno", None) == getattr(b, "lineno", None)
        and bool(a_program.path and b_program.path and _same_path(a_program.path, b_program.path))
    )


def _short_call(call: ast.Call) -> str:
    """``model.optimize_parameters(...)``: the callee and ``...`` for the arguments."""
    return f"{ast.unparse(call.func)}(...)"
