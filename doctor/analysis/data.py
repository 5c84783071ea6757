"""Data loading: which DataLoader a loop iterates, how it was built, its samplers and datasets.

Loaders are followed through assignments, ``accelerator.prepare``-style pass-through calls and the
parameters of same-file functions (``train(model, train_loader)`` -> ``def train(model, loader)``), so a
rule can ask "how was the loader this training loop iterates constructed?" and get every candidate
constructor, or nothing when the loader comes from somewhere we cannot see.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

from doctor.analysis.index import nodes_under
from doctor.analysis.names import receiver_key

from doctor.analysis.program import Program

_PASS_THROUGH = {"prepare", "setup_dataloaders", "prepare_data_loader", "wrap", "setup"}
#: Dataset constructors and names that stream data (no random access: shuffling is done by the dataset).
_STREAMING = re.compile(
    r"iterable|stream|webdataset|wds|shard|IterDataPipe|datapipe|pipe|series|temporal|sequential|ordered|curriculum", re.I
)
MAX_DEPTH = 4


@dataclass(frozen=True)
class LoaderCall:
    """A ``DataLoader(...)`` construction."""

    node: ast.Call
    key: Optional[str]

    def keyword(self, name: str) -> Optional[ast.AST]:
        for kw in self.node.keywords:
            if kw.arg == name:
                return kw.value
        return None

    @property
    def has_star_kwargs(self) -> bool:
        return any(kw.arg is None for kw in self.node.keywords) or any(isinstance(a, ast.Starred) for a in self.node.args)

    @property
    def dataset(self) -> Optional[ast.AST]:
        return self.node.args[0] if self.node.args else self.keyword("dataset")

    def positional(self, index: int) -> Optional[ast.AST]:
        return self.node.args[index] if len(self.node.args) > index else None

    @property
    def shuffle(self) -> Optional[ast.AST]:
        return self.keyword("shuffle") or self.positional(2)

    @property
    def sampler(self) -> Optional[ast.AST]:
        return self.keyword("sampler") or self.positional(3)

    @property
    def batch_sampler(self) -> Optional[ast.AST]:
        return self.keyword("batch_sampler") or self.positional(4)


class DataFlow:
    """Loader, sampler and dataset constructions of one file."""

    def __init__(self, model: Program) -> None:
        self.model = model

    def name_of(self, call: ast.Call) -> str:
        """The called name: ``DataLoader`` for ``torch.utils.data.DataLoader(...)``, ``shuffle`` for ``x().shuffle()``."""
        q = self.model.imports.qualify(call.func)
        if q:
            return q.rsplit(".", 1)[-1]
        f = call.func
        return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""

    @cached_property
    def assignments(self) -> dict[str, list[tuple[ast.AST, ast.AST]]]:
        """Every value assigned to each key, with the assigning statement's function (flow-insensitive)."""
        out: dict[str, list[tuple[ast.AST, ast.AST]]] = {}
        for node in self.model.index.scan(ast.Assign, ast.AnnAssign):
            pairs: list[tuple[ast.AST, ast.AST]] = []
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    pairs.extend(_unpack(t, node.value))
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                pairs.append((node.target, node.value))
            for target, value in pairs:
                key = receiver_key(target)
                if key:
                    out.setdefault(key, []).append((value, self.model.enclosing_function(node)))
        return out

    def is_loader_ctor(self, call: ast.AST) -> bool:
        return isinstance(call, ast.Call) and self.name_of(call) in ("DataLoader", "StatefulDataLoader")

    def loaders(
        self, expr: Optional[ast.AST], scope: ast.AST, _depth: int = 0, _seen: frozenset[int] = frozenset()
    ) -> Optional[list[LoaderCall]]:
        """The ``DataLoader(...)`` calls ``expr`` may evaluate to, or None when any source is unknown."""
        if expr is None or _depth > MAX_DEPTH:
            return None
        if self.is_loader_ctor(expr):
            return [LoaderCall(expr, None)]  # type: ignore[arg-type]
        key = receiver_key(expr)
        if key is None:
            return None
        # `loader = accelerator.prepare(loader)` refers back to the key itself: follow each assignment once.
        values = [(v, fn) for v, fn in self.assignments.get(key, []) if id(v) not in _seen]
        _seen = _seen | {id(v) for v, _ in values}
        if not values:
            return [] if self.assignments.get(key) else self._from_parameter(key, scope, _depth)
        out: list[LoaderCall] = []
        for value, fn in values:
            if self.is_loader_ctor(value):
                out.append(LoaderCall(value, key))  # type: ignore[arg-type]
                continue
            if isinstance(value, ast.Call) and self.name_of(value) in _PASS_THROUGH and len(value.args) == 1:
                inner = self.loaders(value.args[0], fn, _depth + 1, _seen)
                if inner is None:
                    return None
                out.extend(inner)
                continue
            if isinstance(value, ast.Name) or isinstance(value, ast.Attribute):
                inner = self.loaders(value, fn, _depth + 1, _seen)
                if inner is None:
                    return None
                out.extend(inner)
                continue
            if self._prepared_tuple(key, value):
                continue  # handled below through the element the tuple assignment passes through
            returned = self._returned(key, value)
            if returned is None:
                return None
            callee, exprs = returned
            for expr_ in exprs:
                inner = self.loaders(expr_, callee, _depth + 1, _seen)
                if inner is None:
                    return None
                out.extend(inner)
        for value, fn in values:
            if self._prepared_tuple(key, value):
                arg = self._tuple_source(key, value)
                inner = self.loaders(arg, fn, _depth + 1, _seen) if arg is not None else None
                if inner is None:
                    return None
                out.extend(inner)
        return out or None

    def _returned(self, key: str, value: ast.AST) -> Optional[tuple[ast.AST, list[ast.AST]]]:
        """``train_dl, val_dl = build_loaders(cfg)`` with ``build_loaders`` in this file: what it returns for ``key``."""
        if not isinstance(value, ast.Call):
            return None
        func = value.func
        callee = None
        if isinstance(func, ast.Name):
            callee = self.model.functions.get(func.id)
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
            callee = self.model.method(None, func.attr)
        if callee is None:
            return None
        index = self._tuple_index(key, value)
        exprs: list[ast.AST] = []
        for node in ast.walk(callee):
            if isinstance(node, ast.Return) and self.model.enclosing_function(node) is callee:
                if node.value is None:
                    return None
                if index is None:
                    exprs.append(node.value)
                elif isinstance(node.value, (ast.Tuple, ast.List)) and index < len(node.value.elts):
                    exprs.append(node.value.elts[index])
                else:
                    return None
        return (callee, exprs) if exprs else None

    def _tuple_index(self, key: str, value: ast.AST) -> Optional[int]:
        parent = self.model.parents.get(id(value))
        if isinstance(parent, ast.Assign):
            for t in parent.targets:
                if isinstance(t, (ast.Tuple, ast.List)):
                    for i, elt in enumerate(t.elts):
                        if receiver_key(elt) == key:
                            return i
        return None

    def _prepared_tuple(self, key: str, value: ast.AST) -> bool:
        return isinstance(value, ast.Call) and self.name_of(value) in _PASS_THROUGH and len(value.args) > 1

    def _tuple_source(self, key: str, value: ast.Call) -> Optional[ast.AST]:
        """``model, opt, loader = accelerator.prepare(model, opt, loader)``: the argument matching ``key``."""
        for node in self.model.index.scan(ast.Assign):
            if isinstance(node, ast.Assign) and node.value is value:
                for t in node.targets:
                    if isinstance(t, (ast.Tuple, ast.List)):
                        for i, elt in enumerate(t.elts):
                            if receiver_key(elt) == key and i < len(value.args):
                                return value.args[i]
        return None

    @cached_property
    def _calls_by_name(self) -> dict[str, list[ast.Call]]:
        """Calls by the called name (``f(...)`` and ``x.f(...)``), in source order: one pass over the calls of
        the file instead of a scan of every node per parameter followed."""
        out: dict[str, list[ast.Call]] = {}
        for n in self.model.index.of(ast.Call):
            if isinstance(n.func, ast.Name):
                out.setdefault(n.func.id, []).append(n)
            elif isinstance(n.func, ast.Attribute):
                out.setdefault(n.func.attr, []).append(n)
        return out

    def _from_parameter(self, key: str, scope: ast.AST, depth: int) -> Optional[list[LoaderCall]]:
        """``key`` is a parameter of ``scope``: follow every same-file call of it."""
        if not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return None
        params = [a.arg for a in scope.args.posonlyargs + scope.args.args]
        if key not in params and key not in [a.arg for a in scope.args.kwonlyargs]:
            return None
        method = bool(params) and params[0] in ("self", "cls")
        index = params.index(key) - (1 if method else 0) if key in params else None
        out: list[LoaderCall] = []
        sites = self._calls_by_name.get(scope.name, [])
        if not sites:
            return None
        for site in sites:
            arg = next((kw.value for kw in site.keywords if kw.arg == key), None)
            if arg is None and index is not None and index < len(site.args):
                arg = site.args[index]
            inner = self.loaders(arg, self.model.enclosing_function(site), depth + 1) if arg is not None else None
            if inner is None:
                return None
            out.extend(inner)
        return out

    def repeated(self, loop: ast.AST, _depth: int = 0) -> Optional[ast.AST]:
        """The loop that runs ``loop`` again and again (an epoch loop): around it in the same function, or
        around a same-file call of the function that contains it. None for a single pass."""
        m = self.model
        cur = m.parents.get(id(loop))
        while cur is not None and not isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            if isinstance(cur, (ast.For, ast.AsyncFor, ast.While)):
                return cur
            cur = m.parents.get(id(cur))
        if not isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef)) or _depth > 2:
            return None
        for site in m.index.scan(ast.Call):
            if isinstance(site, ast.Call) and (
                (isinstance(site.func, ast.Name) and site.func.id == cur.name)
                or (isinstance(site.func, ast.Attribute) and site.func.attr == cur.name)
            ):
                outer = self.repeated(site, _depth + 1)
                if outer is not None:
                    return outer
        return None

    # -- datasets ------------------------------------------------------------------------------------
    @cached_property
    def iterable_dataset_classes(self) -> set[str]:
        out: set[str] = set()
        for _ in range(2):
            for node in self.model.index.scan(ast.ClassDef):
                if isinstance(node, ast.ClassDef):
                    for base in node.bases:
                        q = self.model.imports.qualify(base) or ""
                        name = q.rsplit(".", 1)[-1]
                        if name in ("IterableDataset", "IterDataPipe", "IterableDatasetShard") or name in out:
                            out.add(node.name)
        return out

    @cached_property
    def random_dataset_classes(self) -> set[str]:
        """Local dataset classes whose ``__getitem__`` draws its own random samples (episodes, random crops of a
        stream): their order does not come from the index."""
        out: set[str] = set()
        for node in self.model.index.scan(ast.ClassDef):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "__getitem__":
                        for call in nodes_under(item):  # a set of class names: the order does not matter
                            if isinstance(call, ast.Call) and re.search(r"rand|sample|shuffle|choice", self.name_of(call)):
                                out.add(node.name)
        return out

    def dataset_streams(self, expr: Optional[ast.AST], _depth: int = 0) -> bool:
        """Could ``expr`` be an iterable (streaming) dataset, or is it shuffled by the dataset itself?"""
        if expr is None or _depth > MAX_DEPTH:
            return False
        if _depth == 0:  # asked again for every loop over the same loader: answered once per expression
            memo = self.__dict__.setdefault("_streams_memo", {})
            if id(expr) not in memo:
                memo[id(expr)] = self._dataset_streams(expr, 0)
            return memo[id(expr)]
        return self._dataset_streams(expr, _depth)

    def _dataset_streams(self, expr: ast.AST, _depth: int) -> bool:
        for node in ast.walk(expr):
            if isinstance(node, ast.Name) and _STREAMING.search(node.id):
                return True
            if isinstance(node, ast.Attribute) and _STREAMING.search(node.attr):
                return True
            if isinstance(node, ast.Call):
                name = self.name_of(node)
                if name in self.iterable_dataset_classes or _STREAMING.search(name) or name in ("shuffle", "to_iterable_dataset"):
                    return True
                if any(kw.arg == "streaming" for kw in node.keywords):
                    return True
        for node in ast.walk(expr):
            if isinstance(node, ast.Call) and self.name_of(node) in self.random_dataset_classes:
                return True
        key = receiver_key(expr)
        if key:
            if self.shuffled_elsewhere(key):
                return True
            for value, _fn in self.assignments.get(key, []):
                if self.dataset_streams(value, _depth + 1):
                    return True
        return False

    def shuffled_elsewhere(self, key: str) -> bool:
        """``dataset.shuffle(...)`` or ``random.shuffle(dataset)`` somewhere in the file."""
        return key in self._shuffled_keys

    @cached_property
    def _shuffled_keys(self) -> set[str]:
        """The keys of every ``x.shuffle(...)`` receiver and argument in the file (one scan, not one per question)."""
        out: set[str] = set()
        for node in self.model.index.of(ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr == "shuffle":
                for k in (receiver_key(node.func.value), *(receiver_key(a) for a in node.args)):
                    if k:
                        out.add(k)
        return out

    # -- samplers ------------------------------------------------------------------------------------
    def distributed_samplers(self) -> list[ast.Call]:
        return [
            n for n in self.model.index.scan(ast.Call)
            if isinstance(n, ast.Call) and self.name_of(n) in ("DistributedSampler", "ElasticDistributedSampler")
        ]

    def set_epoch_calls(self) -> list[ast.Call]:
        return [
            n for n in self.model.index.scan(ast.Call)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "set_epoch"
        ]

    def assigned_key(self, value: ast.AST) -> Optional[str]:
        """The key a value is assigned to directly (``sampler = DistributedSampler(ds)`` -> ``sampler``)."""
        parent = self.model.parents.get(id(value))
        while isinstance(parent, (ast.IfExp, ast.BoolOp)) and value is not getattr(parent, "test", None):
            value, parent = parent, self.model.parents.get(id(parent))  # `DistributedSampler(ds) if ddp else None`
        if isinstance(parent, ast.Assign) and len(parent.targets) == 1:
            return receiver_key(parent.targets[0])
        if isinstance(parent, ast.AnnAssign):
            return receiver_key(parent.target)
        return None


def _unpack(target: ast.AST, value: ast.AST) -> list[tuple[ast.AST, ast.AST]]:
    if isinstance(target, (ast.Tuple, ast.List)):
        if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts):
            out = []
            for t, v in zip(target.elts, value.elts):
                out.extend(_unpack(t, v))
            return out
        return [(t, value) for t in target.elts]
    return [(target, value)]


__all__ = ["DataFlow", "LoaderCall"]
