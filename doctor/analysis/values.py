"""Value provenance: where the value of an expression comes from, as a chain of steps.

``trace(expr)`` follows a value backwards, outermost operation first: through local assignments
(only definitions that surely reach the use), same-file helper returns, module objects defined in the
file (``nn.Sequential(..., nn.Softmax())``, a local ``nn.Module`` whose ``forward`` returns a softmax),
and shape-only tensor operations, which it skips. For ``loss = F.cross_entropy(probs, y)`` with
``probs = F.softmax(model(x), dim=1)`` the trace of ``probs`` is ``softmax -> model -> unknown``.

Rules ask questions on top of it: the last activation applied to a value (``activation``), whether a
value is a model output cut off from autograd (``detached_model_output``), which loss calls feed a
``backward()`` (``backpropagated_losses``). Anything not understood ends a trace with ``other`` or
``unknown``, and the questions answer ``None``: precision first.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterator, Optional

from doctor.analysis import objects as K
from doctor.analysis.events import BACKWARD, Event
from doctor.analysis.names import call_arg, receiver_key

from doctor.analysis.program import Program

# Step kinds.
SOFTMAX = "softmax"
LOG_SOFTMAX = "log_softmax"
SIGMOID = "sigmoid"
LOG = "log"
LINEAR = "linear"  # the output of an nn.Linear layer: raw logits
DETACH = "detach"  # .detach(), .data, .item(), .numpy(), float(x), torch.tensor(x): cut from autograd
MODEL = "model"  # a call of a module/model object; the steps after it are what its forward returns
CALL = "call"  # a same-file helper call; the steps after it are what it returns
LOSS = "loss"  # a loss value (a loss call, `outputs.loss`)
OTHER = "other"  # an operation we do not model: ends the trace
UNKNOWN = "unknown"  # a value we cannot follow (a parameter, an unknown object): ends the trace

ACTIVATIONS = {SOFTMAX, LOG_SOFTMAX, SIGMOID, LINEAR}

#: Namespaces whose attributes are functions (``F.softmax(x)``) rather than tensor methods (``x.softmax()``).
_FUNCTION_NS = {"torch", "torch.nn.functional", "F", "functional", "nn.functional", "torch.special", "torch.Tensor"}
_ACT_NAMES = {
    "softmax": SOFTMAX, "log_softmax": LOG_SOFTMAX, "sigmoid": SIGMOID, "expit": SIGMOID, "log": LOG,
}
_DETACH_METHODS = {"detach", "item", "numpy", "tolist"}
_NEW_LEAF_FUNCS = {"tensor", "Tensor", "FloatTensor", "from_numpy", "DoubleTensor", "LongTensor"}
#: Operations that keep what a value "is" (probabilities stay probabilities).
_SHAPE_OPS = {
    "view", "reshape", "squeeze", "unsqueeze", "permute", "transpose", "contiguous", "flatten", "float", "double",
    "half", "bfloat16", "to", "cpu", "cuda", "clone", "type_as", "view_as", "reshape_as", "t", "expand", "expand_as",
}
_MODULE_CLASSES = {
    "Softmax": SOFTMAX, "Softmax2d": SOFTMAX, "LogSoftmax": LOG_SOFTMAX, "Sigmoid": SIGMOID,
    "Linear": LINEAR, "LazyLinear": LINEAR, "Bilinear": LINEAR,
}
_WRAPPERS = {"DataParallel", "DistributedDataParallel", "DDP", "compile", "FullyShardedDataParallel", "FSDP"}
_LOSS_KINDS = {
    "CrossEntropyLoss": "cross_entropy", "cross_entropy": "cross_entropy",
    "BCEWithLogitsLoss": "bce_with_logits", "binary_cross_entropy_with_logits": "bce_with_logits",
    "NLLLoss": "nll", "nll_loss": "nll",
}
MAX_DEPTH = 12


@dataclass(frozen=True)
class Step:
    kind: str
    #: The expression that performs this step (the softmax call, the model call...).
    node: ast.AST
    #: The operand the step applies to (the softmax's input), when there is one.
    inner: Optional[ast.AST] = None
    #: The file whose tree holds ``node`` when it is not the traced file (a model defined in ``model.py``).
    program: Optional[Program] = None
    #: An inferred fact this step rests on, in the user's words (``model`` is the ``Net`` passed on main.py:9).
    how: Optional[str] = None
    #: ``how`` is a guess (no caller to read), not something read off the code: findings on it are warnings.
    guess: bool = False


@dataclass(frozen=True)
class ModuleRef:
    """The module object an expression holds: a class we can read (its ``forward`` is traced) and/or the call
    that built it (``nn.Linear(...)``)."""

    program: Program
    cls: Optional[ast.ClassDef]
    ctor: Optional[ast.Call]
    name: str
    #: How we know, when it was inferred rather than read off an assignment.
    how: Optional[str] = None
    guess: bool = False


def _tag(steps: tuple[Step, ...], program: Optional[Program], how: Optional[str] = None) -> tuple[Step, ...]:
    """Steps traced in another file carry that file; ``how`` goes on the first step."""
    out = []
    for i, s in enumerate(steps):
        out.append(Step(s.kind, s.node, s.inner, s.program or program, s.how or (how if i == 0 else None), s.guess))
    return tuple(out)


@dataclass(frozen=True)
class LossCall:
    """A call that computes a loss: ``criterion(out, y)``, ``F.cross_entropy(out, y)``."""

    node: ast.Call
    #: "cross_entropy", "bce_with_logits", "nll", or "" for any other loss.
    kind: str
    input: Optional[ast.AST]
    target: Optional[ast.AST]

    @property
    def args(self) -> list[ast.AST]:
        return list(self.node.args) + [kw.value for kw in self.node.keywords]


class ValueTable:
    """Answers provenance questions about expressions of one file."""

    def __init__(self, model: Program, events: Callable[[], Iterator[Event]]) -> None:
        self.model = model
        self.imports = model.imports
        #: Every event of the file's streams (built lazily by the training-loop model).
        self.events = events

    # -- indexes ---------------------------------------------------------------------------------------
    @cached_property
    def classes(self) -> dict[str, ast.ClassDef]:
        return {n.name: n for n in self.model.nodes(ast.ClassDef)}

    @cached_property
    def self_attrs(self) -> dict[str, dict[str, list[ast.AST]]]:
        """Per class: ``self.X = value`` assignments in any of its methods."""
        out: dict[str, dict[str, list[ast.AST]]] = {}
        for node in self.model.nodes(ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    cls = self.model.class_of(self.model.enclosing_function(node))
                    if cls is not None:
                        out.setdefault(cls, {}).setdefault(t.attr, []).append(node.value)
        return out

    @cached_property
    def _module_scope_defs(self) -> dict[str, list[ast.AST]]:
        """Names bound at module level (including under ``if __name__ == "__main__":``)."""
        out: dict[str, list[ast.AST]] = {}

        def visit(body: list[ast.stmt]) -> None:
            for stmt in body:
                if isinstance(stmt, ast.Assign):
                    for t in stmt.targets:
                        if isinstance(t, ast.Name):
                            out.setdefault(t.id, []).append(stmt.value)
                        else:
                            for n in ast.walk(t):
                                if isinstance(n, ast.Name):
                                    out.setdefault(n.id, []).append(stmt)  # unpacked: not followed
                elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign, ast.For, ast.With)):
                    for n in ast.walk(stmt):
                        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                            out.setdefault(n.id, []).append(stmt)
                    if isinstance(stmt, (ast.For, ast.With)):
                        visit(stmt.body)
                elif isinstance(stmt, (ast.If, ast.Try)):
                    visit(stmt.body)
                    visit(getattr(stmt, "orelse", []))
        visit(self.model.tree.body)
        return out

    def module_constant(self, name: str) -> Optional[ast.AST]:
        """The value of a module-level name assigned exactly once (``LR = 3e-4``)."""
        defs = self._module_scope_defs.get(name, [])
        if len(defs) == 1 and isinstance(defs[0], ast.expr):
            return defs[0]
        return None

    def _ancestors(self, node: ast.AST) -> list[ast.AST]:
        return list(self.model.index.ancestors(node))

    def contains(self, outer: ast.AST, node: ast.AST) -> bool:
        return any(a is outer for a in self._ancestors(node)) or outer is node

    # -- reaching definitions -----------------------------------------------------------------------------
    def definition(self, name: ast.Name, at: Optional[ast.AST] = None) -> Optional[tuple[ast.stmt, Optional[int]]]:
        """The assignment that surely gives ``name`` its value where it is read (or at node ``at``), and the
        tuple index when it was unpacked (``a, b = f()``). None when unknown, conditional or not a plain
        assignment."""
        at = at if at is not None else name
        for anc in self.model.index.ancestors(at):
            if isinstance(anc, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)) and any(
                name.id in _bound_names(g.target) for g in anc.generators
            ):
                return None  # a comprehension variable: its own scope, values we do not follow
            if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                break
        fn = self.model.enclosing_function(at)
        pos = (at.lineno, at.col_offset)  # type: ignore[attr-defined]
        ancestors = {id(a) for a in self._ancestors(at)}
        best: Optional[ast.stmt] = None
        for stmt in self.bindings(fn).get(name.id, ()):
            if id(stmt) in ancestors or (stmt.lineno, stmt.col_offset) >= pos:
                continue
            if best is None or (stmt.lineno, stmt.col_offset) > (best.lineno, best.col_offset):
                best = stmt
        if best is None:
            if fn is not self.model.tree and not _is_param(fn, name.id):
                value = self.module_constant(name.id)
                if value is not None:
                    return ast.Expr(value=value), None  # type: ignore[return-value]
            return None
        if not isinstance(best, ast.Assign) or len(best.targets) != 1:
            return None
        for anc in self._ancestors(best):
            if anc is fn or id(anc) in ancestors:
                break
            if isinstance(anc, (ast.If, ast.Try, ast.IfExp, ast.ExceptHandler)) or type(anc).__name__ in ("match_case", "TryStar"):
                return None  # conditional definition: the value at the use is not certain
        target = best.targets[0]
        if isinstance(target, ast.Name):
            return best, None
        if isinstance(target, (ast.Tuple, ast.List)):
            for i, elt in enumerate(target.elts):
                if isinstance(elt, ast.Starred):
                    return None
                if isinstance(elt, ast.Name) and elt.id == name.id:
                    return best, i
        return None

    def bindings(self, fn: ast.AST) -> dict[str, list[ast.AST]]:
        """The statements of ``fn``'s own scope that bind each name."""
        return self._scopes[0].get(id(fn), {})

    def returns(self, fn: ast.AST) -> list[ast.Return]:
        """The ``return`` statements of ``fn`` itself (not of nested functions)."""
        return self._scopes[1].get(id(fn), [])

    @cached_property
    def _scopes(self) -> tuple[dict[int, dict[str, list[ast.AST]]], dict[int, list[ast.Return]]]:
        """One pass over the binding statements and returns of the file, grouped by their scope."""
        binds: dict[int, dict[str, list[ast.AST]]] = {}
        rets: dict[int, list[ast.Return]] = {}
        for node in self.model.nodes(*_BINDERS, ast.Return):
            scope = self._scope_of(node)
            if scope is None:
                continue
            if isinstance(node, ast.Return):
                rets.setdefault(id(scope), []).append(node)
                continue
            table = binds.setdefault(id(scope), {})
            for name in _binders(node):
                table.setdefault(name, []).append(node)
        return binds, rets

    def _scope_of(self, node: ast.AST) -> Optional[ast.AST]:
        """The function (or module) whose local names ``node`` binds; None inside a class body."""
        for anc in self.model.index.ancestors(node):
            if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return anc
            if isinstance(anc, ast.ClassDef):
                return None
        return self.model.tree

    @cached_property
    def _call_sites(self) -> dict[str, list[ast.Call]]:
        out: dict[str, list[ast.Call]] = {}
        for call in self.model.nodes(ast.Call):
            if isinstance(call.func, ast.Name):
                out.setdefault(call.func.id, []).append(call)
        return out

    def argument_for(self, name: ast.Name) -> Optional[ast.AST]:
        """For a parameter of a top-level function called exactly once in the file, the argument passed to it
        there (``train(model, ...)`` with ``model = Net()`` in ``main``). None otherwise."""
        fn = self.model.enclosing_function(name)
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or self.model.functions.get(fn.name) is not fn:
            return None
        if self.bindings(fn).get(name.id):
            return None  # rebound somewhere in the body: not simply the argument
        sites = self._call_sites.get(fn.name, [])
        if len(sites) != 1:
            return None
        call = sites[0]
        params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
        if name.id in params:
            i = params.index(name.id)
            if i < len(call.args) and not any(isinstance(a, ast.Starred) for a in call.args[: i + 1]):
                return call.args[i]
        for kw in call.keywords:
            if kw.arg == name.id:
                return kw.value
        return None

    def argument_sites(self, name: ast.Name) -> list[tuple[Program, ast.AST]]:
        """For a parameter that its function never rebinds: what every visible call passes for it, in this file
        and in the project's other files (``train_epoch(model, ...)`` in ``main.py``). Empty when unknown."""
        fn = self.model.enclosing_function(name)
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or not _is_param(fn, name.id):
            return []
        if self.bindings(fn).get(name.id):
            return []
        return self.model.argument_values(fn, name.id)

    def table_of(self, program: Program) -> Optional["ValueTable"]:
        """The value table of another file of the project (None when it has none)."""
        if program is self.model:
            return self
        return getattr(program, "values", None)

    def where(self, node: ast.AST, program: Optional[Program] = None) -> str:
        """``line 12`` for a node of this file, ``model.py:12`` for one of another file."""
        line = getattr(node, "lineno", 0)
        if program is None or program is self.model or not program.path:
            return f"line {line}"
        import os

        base = os.path.dirname(os.path.abspath(self.model.path)) if self.model.path else ""
        rel = os.path.relpath(program.path, base) if base else program.path
        return f"{rel}:{line}"

    def _traced_parameter(self, name: ast.Name, depth: int) -> Optional[tuple[Step, ...]]:
        """The trace of a parameter through its callers, when they all pass values of the same shape."""
        sites = self.argument_sites(name)
        traces = []
        for program, value in sites:
            table = self.table_of(program)
            if table is None:
                return None
            steps = table.trace(value, depth + 1)
            traces.append((program, value, steps if program is self.model else _tag(steps, program)))
        if not traces or len({tuple(s.kind for s in t) for _, _, t in traces}) != 1:
            return None
        program, value, steps = traces[0]
        how = f"`{name.id}` is `{ast.unparse(value)}` passed on {self.where(value, program)}"
        if len(traces) > 1:
            how += f" (and {len(traces) - 1} more call{'s' if len(traces) > 2 else ''} alike)"
        return _tag(steps, None, how)

    def inferences(self, expr: Optional[ast.AST]) -> list[str]:
        """The inferred facts the trace of ``expr`` rests on (for messages: say how doctor knows)."""
        return [s.how for s in self.trace(expr) if s.how]

    def because(self, expr: Optional[ast.AST]) -> str:
        """`` (inferred: ...)`` naming the inferred facts behind ``expr``'s trace, or "" when there are none."""
        hows = list(dict.fromkeys(self.inferences(expr)))
        return f" (inferred: {'; '.join(hows)})" if hows else ""

    def rests_on_guess(self, expr: Optional[ast.AST]) -> bool:
        """Does the trace of ``expr`` rest on a guess (a class taken for a parameter nobody passes)?"""
        return any(s.guess for s in self.trace(expr))

    def value_of(self, name: ast.Name) -> Optional[ast.AST]:
        """The expression a plain (non-unpacked) definition assigned to ``name``."""
        d = self.definition(name)
        if d is None or d[1] is not None:
            return None
        return d[0].value  # type: ignore[attr-defined]

    # -- modules ----------------------------------------------------------------------------------------
    def module_ctor(self, expr: ast.AST, _depth: int = 0) -> Optional[ast.Call]:
        """The constructor call of the module object ``expr`` refers to (``nn.Linear(...)``, ``Net()``)."""
        if _depth > MAX_DEPTH:
            return None
        if isinstance(expr, ast.Call):
            q = self.imports.qualify(expr.func) or ""
            last = q.rsplit(".", 1)[-1]
            if isinstance(expr.func, ast.Attribute) and expr.func.attr in ("to", "cuda", "cpu", "train", "float", "half", "double"):
                return self.module_ctor(expr.func.value, _depth + 1)
            if last in _WRAPPERS and expr.args:
                return self.module_ctor(expr.args[0], _depth + 1)
            if last in self.classes or (q.startswith(("torch.nn.", "nn.")) and last[:1].isupper()):
                return expr
            return None
        if isinstance(expr, ast.Name):
            value = self.value_of(expr)
            if value is None:
                value = self.argument_for(expr)
            return self.module_ctor(value, _depth + 1) if value is not None else None
        if isinstance(expr, ast.Attribute):
            if isinstance(expr.value, ast.Name) and expr.value.id == "self":
                cls = self.model.class_of(self.model.enclosing_function(expr))
                values = self.self_attrs.get(cls or "", {}).get(expr.attr, [])
                return self.module_ctor(values[0], _depth + 1) if len(values) == 1 else None
            if expr.attr == "module":
                return self.module_ctor(expr.value, _depth + 1)
        return None

    def module_of(self, expr: Optional[ast.AST], _depth: int = 0) -> Optional[ModuleRef]:
        """The module object ``expr`` holds: built here (``Net()``, ``nn.Linear(...)``), passed by a caller in
        this or another file of the project, or — for a parameter of a function nobody calls whose file defines
        exactly one ``nn.Module`` — that one class (said so in ``how``)."""
        if expr is None or _depth > MAX_DEPTH:
            return None
        if isinstance(expr, ast.Call):
            q = self.imports.qualify(expr.func) or ""
            last = q.rsplit(".", 1)[-1]
            if isinstance(expr.func, ast.Attribute) and expr.func.attr in ("to", "cuda", "cpu", "train", "float", "half", "double"):
                return self.module_of(expr.func.value, _depth + 1)
            if last in _WRAPPERS and expr.args:
                return self.module_of(expr.args[0], _depth + 1)
            if last in self.classes:
                return ModuleRef(self.model, self.classes[last], expr, last)
            if q.startswith(("torch.nn.", "nn.")) and last[:1].isupper():
                return ModuleRef(self.model, None, expr, last)
            found = self.model.resolve_class(expr.func)
            if found is not None and found[0].class_kind(found[1]) == K.MODEL:
                return ModuleRef(found[0], found[1], expr, found[1].name)
            return None
        if isinstance(expr, ast.Name):
            value = self.value_of(expr)
            if value is None:
                value = self.argument_for(expr)
            if value is not None:
                return self.module_of(value, _depth + 1)
            return self._module_parameter(expr, _depth)
        if isinstance(expr, ast.Attribute):
            if isinstance(expr.value, ast.Name) and expr.value.id == "self":
                cls = self.model.class_of(self.model.enclosing_function(expr))
                values = self.self_attrs.get(cls or "", {}).get(expr.attr, [])
                return self.module_of(values[0], _depth + 1) if len(values) == 1 else None
            if expr.attr == "module":
                return self.module_of(expr.value, _depth + 1)
        return None

    def _module_parameter(self, name: ast.Name, depth: int) -> Optional[ModuleRef]:
        fn = self.model.enclosing_function(name)
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or not _is_param(fn, name.id) or self.bindings(fn).get(name.id):
            return None
        sites = self.argument_sites(name)
        if sites:
            refs = []
            for program, value in sites:
                table = self.table_of(program)
                ref = table.module_of(value, depth + 1) if table is not None else None
                if ref is None:
                    return None
                refs.append((program, value, ref))
            if len({((r.program.path, r.cls.lineno) if r.cls is not None else r.name) for _, _, r in refs}) != 1:
                return None
            program, value, ref = refs[0]
            how = f"`{name.id}` is the `{ref.name}` passed on {self.where(value, program)}"
            return ModuleRef(ref.program, ref.cls, ref.ctor, ref.name, ref.how or how, ref.guess)
        annotation = next((a.annotation for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs if a.arg == name.id), None)
        if annotation is not None:
            found = self.model.resolve_class(annotation)
            if found is not None and found[0].class_kind(found[1]) == K.MODEL:
                return ModuleRef(found[0], found[1], None, found[1].name, f"`{name.id}` is annotated `{found[1].name}`")
            return None
        if self.model.call_sites(fn):
            return None  # called, but with values we cannot follow
        modules = [c for c in self.model.classes.values() if self.model.class_kind(c) == K.MODEL]
        if len(modules) == 1:
            cls = modules[0]
            return ModuleRef(
                self.model, cls, None, cls.name,
                f"`{fn.name}()` has no caller in the project and `{cls.name}` is the only nn.Module in this file, so "
                f"`{name.id}` is taken to be a `{cls.name}`", guess=True,
            )
        return None

    def ref_output(self, ref: ModuleRef, depth: int) -> tuple[Step, ...]:
        """What a module's forward returns."""
        table = self.table_of(ref.program)
        if table is None:
            return (Step(UNKNOWN, ref.ctor or ast.Constant(None)),)
        if ref.cls is not None:
            found = ref.program.class_method(ref.cls, "forward")
            if found is None:
                return (Step(UNKNOWN, ref.cls),)
            program, fwd = found
            other = self.table_of(program)
            if other is None:
                return (Step(UNKNOWN, ref.cls),)
            steps = other._returns(fwd, depth)
            return steps if program is self.model else _tag(steps, program)
        if ref.ctor is not None:
            steps = table.module_output(ref.ctor, depth)
            return steps if ref.program is self.model else _tag(steps, ref.program)
        return (Step(UNKNOWN, ast.Constant(None)),)

    @cached_property
    def class_kinds(self) -> dict[str, str]:
        return K.classes_by_kind(self.model.index, self.imports)

    def is_local_module_class(self, name: Optional[str]) -> bool:
        """Is ``name`` a class of this file that subclasses ``nn.Module`` (directly or through local classes)?"""
        return bool(name) and self.class_kinds.get(name or "") == K.MODEL

    def forward_of(self, cls_name: str, _seen: frozenset = frozenset()) -> Optional[ast.AST]:
        """The ``forward`` a local class runs: its own or the one of a local base class."""
        cls = self.classes.get(cls_name)
        if cls is None or cls_name in _seen:
            return None
        fwd = self.model.methods.get(cls_name, {}).get("forward")
        if fwd is not None:
            return fwd
        for base in cls.bases:
            if isinstance(base, ast.Name):
                found = self.forward_of(base.id, _seen | {cls_name})
                if found is not None:
                    return found
        return None

    def module_output(self, ctor: ast.Call, depth: int) -> tuple[Step, ...]:
        q = self.imports.qualify(ctor.func) or ""
        last = q.rsplit(".", 1)[-1]
        if last in self.classes:
            fwd = self.forward_of(last)
            return self._returns(fwd, depth) if fwd is not None else (Step(UNKNOWN, ctor),)
        if last in _MODULE_CLASSES:
            return (Step(_MODULE_CLASSES[last], ctor),)
        if last == "Sequential" and ctor.args and not isinstance(ctor.args[-1], ast.Starred):
            inner = self.module_ctor(ctor.args[-1], depth + 1)
            if inner is not None:
                return self.module_output(inner, depth + 1)
        return (Step(UNKNOWN, ctor),)

    def _returns(self, fn: ast.AST, depth: int, index: Optional[int] = None) -> tuple[Step, ...]:
        """The trace of what ``fn`` returns, when all its returns agree on their step kinds."""
        traces = []
        for node in self.returns(fn):
            if node.value is None:
                return (Step(UNKNOWN, fn),)
            traces.append(self._select(node.value, index, depth + 1) if index is not None else self.trace(node.value, depth + 1))
        if not traces:
            return (Step(UNKNOWN, fn),)
        kinds = {tuple(s.kind for s in t) for t in traces}
        return traces[0] if len(kinds) == 1 else (Step(UNKNOWN, fn),)

    # -- tracing ------------------------------------------------------------------------------------------
    def trace(self, expr: Optional[ast.AST], depth: int = 0) -> tuple[Step, ...]:
        """The steps that produced the value of ``expr``, outermost first; it ends in ``other``/``unknown``
        when the origin is not understood, or with an activation/loss/model output step otherwise."""
        if expr is None or depth > MAX_DEPTH:
            return (Step(UNKNOWN, expr or ast.Constant(None)),)
        if isinstance(expr, ast.Name):
            d = self.definition(expr)
            if d is None:
                arg = self.argument_for(expr)
                if arg is not None:
                    return self.trace(arg, depth + 1)
                traced = self._traced_parameter(expr, depth)
                return traced if traced is not None else (Step(UNKNOWN, expr),)
            stmt, index = d
            value = stmt.value  # type: ignore[attr-defined]
            return self._select(value, index, depth + 1) if index is not None else self.trace(value, depth + 1)
        if isinstance(expr, ast.Attribute):
            if expr.attr == "data":
                return (Step(DETACH, expr, expr.value),) + self.trace(expr.value, depth + 1)
            if expr.attr in ("T", "mT", "logits"):
                return self.trace(expr.value, depth + 1)
            if expr.attr == "loss":
                return (Step(LOSS, expr),)
            return (Step(OTHER, expr),)
        if isinstance(expr, ast.Subscript):
            sl = expr.slice
            if isinstance(sl, ast.Constant) and isinstance(sl.value, int) and not isinstance(sl.value, bool):
                return self._select(expr.value, sl.value, depth + 1)
            if isinstance(sl, ast.Constant) and sl.value == "loss":
                return (Step(LOSS, expr),)
            return self.trace(expr.value, depth + 1)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.Add, ast.Sub)):
            for side, other in ((expr.left, expr.right), (expr.right, expr.left)):
                if isinstance(side, ast.Constant) and isinstance(side.value, (int, float)):
                    return self.trace(other, depth + 1)
            return (Step(OTHER, expr),)
        if isinstance(expr, ast.Call):
            return self._trace_call(expr, depth)
        return (Step(OTHER, expr),)

    def _select(self, expr: ast.AST, index: int, depth: int) -> tuple[Step, ...]:
        """The trace of element ``index`` of a tuple-valued expression (``out[0]``, ``a, b = f()``)."""
        if depth > MAX_DEPTH:
            return (Step(UNKNOWN, expr),)
        if isinstance(expr, (ast.Tuple, ast.List)):
            if index < len(expr.elts) and not any(isinstance(e, ast.Starred) for e in expr.elts):
                return self.trace(expr.elts[index], depth + 1)
            return (Step(UNKNOWN, expr),)
        if isinstance(expr, ast.Name):
            d = self.definition(expr)
            if d is None or d[1] is not None:
                return (Step(UNKNOWN, expr),)
            return self._select(d[0].value, index, depth + 1)  # type: ignore[attr-defined]
        if isinstance(expr, ast.Call):
            fn = self._helper(expr)
            if fn is not None:
                return (Step(CALL, expr),) + self._returns(fn, depth, index)
            ref = self.module_of(expr.func)
            if ref is not None:
                model_step = Step(MODEL, expr, how=ref.how, guess=ref.guess)
                found = ref.program.class_method(ref.cls, "forward") if ref.cls is not None else None
                other = self.table_of(found[0]) if found is not None else None
                if found is not None and other is not None:
                    steps = other._returns(found[1], depth, index)
                    return (model_step,) + (steps if found[0] is self.model else _tag(steps, found[0]))
                return (model_step, Step(UNKNOWN, expr))
        # Indexing a tensor (a batch row) keeps what it is; indexing anything else we do not know.
        inner = self.trace(expr, depth + 1)
        return inner if inner and inner[0].kind in ACTIVATIONS | {DETACH} else (Step(UNKNOWN, expr),)

    def _helper(self, call: ast.Call) -> Optional[ast.AST]:
        func = call.func
        if isinstance(func, ast.Name):
            return self.model.functions.get(func.id) if func.id not in self.classes else None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
            cls = self.model.class_of(self.model.enclosing_function(call))
            if cls is not None and func.attr in self.model.methods.get(cls, {}) and func.attr != "forward":
                return self.model.methods[cls][func.attr]
        return None

    def _trace_call(self, call: ast.Call, depth: int) -> tuple[Step, ...]:
        func = call.func
        q = self.imports.qualify(func) or ""
        ns, _, last = q.rpartition(".")
        is_function = isinstance(func, ast.Name) or ns in _FUNCTION_NS
        if is_function and last in ("float", "int") and isinstance(func, ast.Name) and call.args:
            return (Step(DETACH, call, call.args[0]),) + self.trace(call.args[0], depth + 1)
        if isinstance(func, ast.Attribute) and ns in _FUNCTION_NS:
            arg = call.args[0] if call.args else None
            if last in _ACT_NAMES and arg is not None:
                return (Step(_ACT_NAMES[last], call, arg),) + self.trace(arg, depth + 1)
            if last in _SHAPE_OPS | {"squeeze", "unsqueeze"} and arg is not None:
                return self.trace(arg, depth + 1)
            if last in _NEW_LEAF_FUNCS | {"detach"} and arg is not None:
                return (Step(DETACH, call, arg),) + self.trace(arg, depth + 1)
            if last in K.LOSS_FUNCTIONS:
                return (Step(LOSS, call),)
            return (Step(OTHER, call),)
        on_self = isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self"
        if isinstance(func, ast.Attribute) and not is_function and not on_self:
            recv = func.value
            if func.attr in _ACT_NAMES:
                return (Step(_ACT_NAMES[func.attr], call, recv),) + self.trace(recv, depth + 1)
            if func.attr in _DETACH_METHODS:
                return (Step(DETACH, call, recv),) + self.trace(recv, depth + 1)
            if func.attr in _SHAPE_OPS:
                return self.trace(recv, depth + 1)
            if func.attr == "forward":
                return self._module_call(call, recv, depth)
        fn = self._helper(call)
        if fn is not None:
            return (Step(CALL, call),) + self._returns(fn, depth)
        return self._module_call(call, func, depth)

    def _module_call(self, call: ast.Call, module: ast.AST, depth: int) -> tuple[Step, ...]:
        ref = self.module_of(module)
        if ref is not None:
            if ref.name.endswith("Loss"):
                return (Step(LOSS, call),)
            return (Step(MODEL, call, how=ref.how, guess=ref.guess),) + self.ref_output(ref, depth + 1)
        kind = self.model.objects.kind(receiver_key(module))
        if kind == K.LOSS:
            return (Step(LOSS, call),)
        if kind == K.MODEL:
            return (Step(MODEL, call), Step(UNKNOWN, call))
        return (Step(OTHER, call),)

    # -- questions --------------------------------------------------------------------------------------
    def activation(self, expr: Optional[ast.AST]) -> Optional[Step]:
        """The last activation applied to a value: softmax, log_softmax (also ``log(softmax(x))``), sigmoid,
        or linear (raw logits of an ``nn.Linear``). None when unknown."""
        steps = [s for s in self.trace(expr) if s.kind not in (MODEL, CALL)]
        if not steps:
            return None
        first = steps[0]
        if first.kind == LOG:
            return Step(LOG_SOFTMAX, first.node, first.inner) if len(steps) > 1 and steps[1].kind == SOFTMAX else None
        return first if first.kind in ACTIVATIONS else None

    def detached_model_output(self, expr: Optional[ast.AST]) -> Optional[Step]:
        """The detaching step, when ``expr`` is a model output cut off from autograd after the model ran."""
        detach: Optional[Step] = None
        for s in self.trace(expr):
            if s.kind == DETACH:
                detach = detach or s
            elif s.kind == MODEL:
                return detach
            else:
                return None
        return None

    def attached_model_output(self, expr: Optional[ast.AST]) -> bool:
        """May ``expr`` be a model output that still carries gradient? An operation we do not model counts as
        yes (``policy_net(s).gather(1, a)``); a plain unknown name (a batch from the loader) as no."""
        steps = self.trace(expr)
        if any(s.kind == DETACH for s in steps[: _first(steps, MODEL)]):
            return False
        return any(s.kind == MODEL for s in steps) or steps[0].kind == OTHER

    def removable_activation(self, expr: ast.AST, step: Step) -> Optional[tuple[ast.AST, ast.AST]]:
        """``(node to replace, its replacement)`` that removes activation ``step`` from the value ``expr``
        passes to a loss: the call itself when inline, or the name bound to it when the activation's input
        is a plain name that still holds the same value at ``expr``. None when removing it would need more."""
        if step.inner is None:
            return None
        if step.node is expr:
            return expr, step.inner
        if isinstance(expr, ast.Name) and self.value_of(expr) is step.node and isinstance(step.inner, ast.Name):
            here = self.definition(step.inner, at=expr)
            there = self.definition(step.inner)
            if here is not None and there is not None and here[0] is there[0] and here[1] == there[1]:
                return expr, step.inner
            fn = self.model.enclosing_function(expr)
            if here is None and there is None and _is_param(fn, step.inner.id) and not self.bindings(fn).get(step.inner.id):
                return expr, step.inner  # a parameter that is never rebound
        return None

    # -- which models a value depends on -------------------------------------------------------------------
    def model_reach(self, expr: Optional[ast.AST]) -> dict[str, ast.AST]:
        """The models whose forward passes ``expr`` depends on, each with ``None`` when the dependence keeps the
        autograd graph, or with the detaching node (``fake.detach()``) when every path to it is cut.

        Names are followed through their assignments in the same function; calls we do not know pass their
        arguments' dependencies through (precision: an unknown call never hides a path)."""
        found: dict[str, Optional[ast.AST]] = {}
        self._reach(expr, None, found, 0, set())
        return found  # type: ignore[return-value]

    def _reach(self, expr: Optional[ast.AST], cut: Optional[ast.AST], found: dict, depth: int, seen: set) -> None:
        if expr is None or depth > MAX_DEPTH:
            return
        if isinstance(expr, ast.Name):
            if id(expr) in seen:
                return
            seen.add(id(expr))
            d = self.definition(expr)
            if d is not None:
                self._reach(d[0].value, cut, found, depth + 1, seen)  # type: ignore[attr-defined]
            return
        if isinstance(expr, ast.Attribute):
            self._reach(expr.value, cut or (expr if expr.attr == "data" else None), found, depth + 1, seen)
            return
        if isinstance(expr, ast.Call):
            func = expr.func
            if isinstance(func, ast.Attribute) and func.attr in _DETACH_METHODS:
                self._reach(func.value, cut or expr, found, depth + 1, seen)
                return
            q = self.imports.qualify(func) or ""
            if q.rsplit(".", 1)[-1] in _NEW_LEAF_FUNCS | {"detach"} and q.startswith("torch"):
                for a in expr.args:
                    self._reach(a, cut or expr, found, depth + 1, seen)
                return
            key = receiver_key(func) if not isinstance(func, ast.Attribute) or func.attr != "forward" else receiver_key(func.value)
            if key and self.model.objects.kind(key) == K.MODEL and not self.model.functions.get(key) and not self.model.classes.get(key):
                if cut is None:
                    found[key] = None
                else:
                    found.setdefault(key, cut)
            elif isinstance(func, ast.Attribute):
                self._reach(func.value, cut, found, depth + 1, seen)
            for a in list(expr.args) + [k.value for k in expr.keywords]:
                self._reach(a, cut, found, depth + 1, seen)
            return
        for child in ast.iter_child_nodes(expr):
            if isinstance(child, ast.expr):
                self._reach(child, cut, found, depth + 1, seen)

    # -- losses ------------------------------------------------------------------------------------------
    @cached_property
    def _loss_keys(self) -> set[str]:
        """Keys that may hold a loss object: assigned from a loss class, or a loss by kind or name."""
        out = {k for k, info in self.model.objects.objects.items() if info.kind == K.LOSS}
        for node in self.model.nodes(ast.Assign):
            if isinstance(node.value, ast.Call):
                last = (self.imports.qualify(node.value.func) or "").rsplit(".", 1)[-1]
                if last in K.LOSS_CLASSES:
                    out.update(k for t in node.targets for k in [receiver_key(t)] if k)
        return out

    def loss_kind(self, call: ast.Call) -> Optional[str]:
        """"cross_entropy"/"bce_with_logits"/"nll" for those losses, "" for other losses, None for non-losses."""
        func = call.func
        last_name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if last_name in K.LOSS_FUNCTIONS:
            q = self.imports.qualify(func) or ""
            ns, _, last = q.rpartition(".")
            if ns in _FUNCTION_NS:
                return _LOSS_KINDS.get(last, "")
        # Cheap filter first: most calls are not of a loss object, and resolving the callee costs more.
        key = receiver_key(func)
        if not isinstance(func, ast.Call) and (key is None or (key not in self._loss_keys and K.kind_from_name(key) != K.LOSS)):
            return None
        ctor = self.module_ctor(func)
        if ctor is not None:
            name = (self.imports.qualify(ctor.func) or "").rsplit(".", 1)[-1]
            if name in K.LOSS_CLASSES:
                return _LOSS_KINDS.get(name, "")
            return None
        key = receiver_key(call.func)
        info = self.model.objects.get(key)
        if info is not None and info.kind == K.LOSS and info.ctor_name in K.LOSS_CLASSES and not info.from_name_only:
            return _LOSS_KINDS.get(info.ctor_name, "")
        if info is None and self.model.objects.kind(key) == K.LOSS:
            return ""
        return None

    @cached_property
    def _loss_call_ids(self) -> set[int]:
        return {id(lc.node) for lc in self.loss_calls}

    @cached_property
    def loss_calls(self) -> list[LossCall]:
        out = []
        for node in self.model.nodes(ast.Call):
            kind = self.loss_kind(node)
            if kind is None:
                continue
            inp = call_arg(node, "input", 0)
            tgt = call_arg(node, "target", 1)
            out.append(LossCall(node, kind, inp, tgt))
        return out

    def loss_sources(self, expr: Optional[ast.AST], _depth: int = 0, _seen: Optional[set] = None) -> Iterator[ast.Call]:
        """Loss calls whose value flows into ``expr``: through arithmetic, local assignments (all of them,
        augmented ones too: ``loss += w * crit(...)``), ``scaler.scale(...)`` and reductions."""
        seen = _seen if _seen is not None else set()
        if expr is None or _depth > MAX_DEPTH or id(expr) in seen:
            return
        seen.add(id(expr))
        losses = self._loss_call_ids
        for node in ast.walk(expr):
            if isinstance(node, ast.Call) and id(node) in losses:
                yield node
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                fn = self.model.enclosing_function(node)
                for stmt in self.bindings(fn).get(node.id, ()):
                    if (stmt.lineno, stmt.col_offset) < (node.lineno, node.col_offset):
                        value = getattr(stmt, "value", None)
                        if value is not None:
                            yield from self.loss_sources(value, _depth + 1, seen)

    def backpropagated_losses(self) -> dict[int, tuple[ast.AST, list[ast.Call]]]:
        """Loss calls (by id) that reach a ``backward()`` outside ``no_grad``: that backward call, and every
        loss call that reaches it."""
        out: dict[int, tuple[ast.AST, list[ast.Call]]] = {}
        for ev in self.events():
            if ev.kind != BACKWARD or ev.no_grad or ev.arg is None:
                continue
            sources = list(self.loss_sources(ev.arg))
            for call in sources:
                out.setdefault(id(call), (ev.node, sources))
        return out


def _first(steps: tuple[Step, ...], kind: str) -> int:
    for i, s in enumerate(steps):
        if s.kind == kind:
            return i
    return len(steps)


def _is_param(fn: ast.AST, name: str) -> bool:
    args = getattr(fn, "args", None)
    if args is None:
        return False
    every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
    return any(a.arg == name for a in every)


_BINDERS = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.With, ast.AsyncWith, ast.NamedExpr)


def _binders(stmt: ast.AST) -> set[str]:
    """The names ``stmt`` (re)binds in the current scope."""
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
        targets = [stmt.target]
    elif isinstance(stmt, (ast.For, ast.AsyncFor)):
        targets = [stmt.target]
    elif isinstance(stmt, (ast.With, ast.AsyncWith)):
        targets = [i.optional_vars for i in stmt.items if i.optional_vars is not None]
    elif isinstance(stmt, ast.NamedExpr):
        targets = [stmt.target]
    else:
        return set()
    return set().union(*(_bound_names(t) for t in targets)) if targets else set()


def _bound_names(target: ast.AST) -> set[str]:
    """Names a target binds: ``a``, ``a, (b, *c)``; not ``a.x`` or ``a[i]`` (those mutate ``a``)."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_bound_names(e) for e in target.elts)) if target.elts else set()
    return set()


def literal_number(model: Program, node: Optional[ast.AST]) -> Optional[float]:
    """The value of a numeric literal (``3e-4``, ``-1``), or of a module-level name bound once to one."""
    if isinstance(node, ast.Name):
        node = model.values.module_constant(node.id)
    if node is None:
        return None
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
