"""Per-iteration event order: what happens in which order inside each loop, under which condition.

A *stream* is the ordered list of training events of one function (or the module body), with the
helpers it calls from the same file inlined at their call sites. Every event knows the loops around it
(innermost last), the conditions it runs under, the ``if`` arms it sits in (to tell exclusive branches
apart) and the ``with`` contexts around it (``no_grad``, ``autocast``, ``accelerator.accumulate``...).
"""

from __future__ import annotations

import ast
import itertools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional

from doctor.analysis.names import last_part, receiver_key
from doctor.analysis import objects as K

if TYPE_CHECKING:
    from doctor.analysis.program import Program

# Event kinds.
BACKWARD = "backward"
STEP = "step"  # an optimizer step (opt.step(), scaler.step(opt))
SCHED_STEP = "sched_step"
CLEAR = "clear"  # gradients cleared: opt.zero_grad(), model.zero_grad(), p.grad = None
ENGINE_STEP = "engine_step"  # DeepSpeed engine.step(): steps and clears
CLIP = "clip"
UNSCALE = "unscale"
EVAL = "eval"
TRAIN = "train"
FORWARD = "forward"

#: Names of conditions and flags that gate an optimizer step on the end of an accumulation window.
ACCUM_NAME = re.compile(
    r"accum|sync_grad|grad_?acc|micro|is_accumulating|boundary|should_(step|update|sync|optimi)"
    r"|do_(step|update|sync|optimi)|update_(step|now|params|weights)|optimi[sz]er_step|optim_step|step_now",
    re.I,
)
#: Inner loops whose iterations are micro-steps of one optimizer update.
MICRO_LOOP = re.compile(r"accum|micro|grad_?acc|chunk|split|sub_?batch|mini_?batch|n_?micro", re.I)

_NO_GRAD_CTX = {"no_grad", "inference_mode"}
#: Calls named like a model (`unwrap_model(m)`, `trainer.get_model()`) that are helpers, not forward passes.
_NOT_A_MODEL_CALL = re.compile(
    r"^_*(get|unwrap|load|build|create|make|init|wrap|prepare|postprocess|preprocess|setup|save|compile|to|convert"
    r"|export|freeze|is|has|print|log|copy|update|register|set|check|fuse|quantize|deepcopy|add|remove|patch|replace)_",
)
MAX_INLINE_DEPTH = 3
MAX_EVENTS = 20000

_ids = itertools.count()


@dataclass(eq=False)
class Loop:
    node: ast.AST
    parent: Optional["Loop"]
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def iter(self) -> Optional[ast.AST]:
        return getattr(self.node, "iter", None)

    @property
    def target(self) -> Optional[ast.AST]:
        return getattr(self.node, "target", None)

    def ancestors(self) -> Iterator["Loop"]:
        loop: Optional[Loop] = self
        while loop is not None:
            yield loop
            loop = loop.parent

    @property
    def stored_names(self) -> frozenset[str]:
        cached = self.__dict__.get("_stored")
        if cached is None:
            cached = self.__dict__["_stored"] = _stored_names(self.node)
        return cached

    def looks_like_micro_steps(self) -> bool:
        text = []
        for part in (self.iter, self.target):
            if part is not None:
                text.extend(n.id for n in ast.walk(part) if isinstance(n, ast.Name))
                text.extend(n.attr for n in ast.walk(part) if isinstance(n, ast.Attribute))
        return any(MICRO_LOOP.search(t) for t in text)


@dataclass(frozen=True, eq=False)
class Guard:
    test: ast.AST
    negated: bool
    accumulation: bool
    #: Innermost loop at the point where the condition was tested.
    loop: Optional[Loop]
    id: int = field(default_factory=lambda: next(_ids))


@dataclass(eq=False)
class Event:
    kind: str
    node: ast.AST
    order: int
    loops: tuple[Loop, ...]
    guards: tuple[Guard, ...]
    branches: tuple[tuple[int, int], ...]
    contexts: tuple[str, ...]
    target: Optional[str] = None
    arg: Optional[ast.AST] = None
    flavor: str = ""
    #: Call sites through which this event was inlined (outermost first).
    via: tuple[ast.AST, ...] = ()

    @property
    def loop(self) -> Optional[Loop]:
        return self.loops[-1] if self.loops else None

    def site(self, other: "Event") -> ast.AST:
        """Where this event is ordered against ``other``: the call itself when both run in the same function,
        else the helper call (in the function they share) that this event was inlined through. Order mistakes
        are reported where the order was written."""
        depth = 0
        while depth < min(len(self.via), len(other.via)) and self.via[depth] is other.via[depth]:
            depth += 1
        return self.via[depth] if depth < len(self.via) else self.node

    def exclusive_with(self, other: "Event") -> bool:
        mine = dict(self.branches)
        return any(arm != mine[b] for b, arm in other.branches if b in mine)

    def guarded_by(self, guard: Guard) -> bool:
        return any(g is guard for g in self.guards)

    def accumulation_guards(self, loop: Optional[Loop] = None) -> list[Guard]:
        return [g for g in self.guards if g.accumulation and (loop is None or g.loop is loop)]

    @property
    def no_grad(self) -> bool:
        return any(c in _NO_GRAD_CTX for c in self.contexts)

    @property
    def in_accumulate_context(self) -> bool:
        return "accumulate" in self.contexts


def _gates_window(test: ast.AST, loop: Optional["Loop"]) -> bool:
    return is_accumulation_test(test) and not is_mode_switch(test, loop)


def is_accumulation_test(test: ast.AST) -> bool:
    for node in ast.walk(test):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            if not (isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)):
                return True
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name and ACCUM_NAME.search(name):
            return True
    return False


#: State flags that frameworks flip between iterations: a condition on them is never a mode switch.
_DYNAMIC_FLAGS = re.compile(r"sync_grad|boundary|is_accumulating|is_last|should_|do_step|update_now|step_now", re.I)


def _stored_names(loop_node: ast.AST) -> frozenset[str]:
    """Names (and ``self.x`` keys) a loop binds or rebinds: its target and every store in its body."""
    out: set[str] = set()
    for part in (getattr(loop_node, "target", None), *getattr(loop_node, "body", ())):
        if part is None:
            continue
        for node in ast.walk(part):
            if isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Store):
                key = receiver_key(node)
                if key:
                    out.add(key)
            elif isinstance(node, ast.AugAssign):
                key = receiver_key(node.target)
                if key:
                    out.add(key)
    return frozenset(out)


def is_mode_switch(test: ast.AST, loop: Optional["Loop"]) -> bool:
    """A condition that cannot change between the iterations of ``loop``: ``if cfg.ACCUMULATION_STEPS > 1``,
    ``if args.grad_accum == 1``. Such a condition selects a loop shape; it does not gate a window.

    It reads only names and attributes that the loop never binds, calls nothing, takes no modulo, and is a
    comparison with numeric constants (a bare flag such as ``accelerator.sync_gradients`` may be flipped by
    the framework between iterations)."""
    if loop is None:
        return False
    stored = loop.stored_names
    comparisons = 0
    for node in ast.walk(test):
        if isinstance(node, (ast.Call, ast.Subscript, ast.NamedExpr, ast.Await)):
            return False
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return False
        if isinstance(node, ast.Compare):
            if not all(isinstance(c, ast.Constant) and isinstance(c.value, (int, float)) for c in node.comparators):
                return False
            comparisons += 1
        if isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Load):
            key = receiver_key(node)
            if key is None:
                return False
            if any(key == s or key.startswith(s + ".") for s in stored):
                return False
            if isinstance(node, ast.Attribute) and _DYNAMIC_FLAGS.search(node.attr):
                return False
    return comparisons > 0


def _names_a_definition(model: "Program", name: str) -> bool:
    """``name`` is a function or class defined or imported here (``train_model(...)``, ``reparameterize_model``),
    not a variable holding a model, whatever its name says."""
    return name in model.functions or name in model.classes or name in model.imports.aliases


def _ends_flow(body: list[ast.stmt]) -> bool:
    return bool(body) and isinstance(body[-1], (ast.Continue, ast.Break, ast.Return, ast.Raise))


@dataclass
class BuildState:
    loops: tuple[Loop, ...] = ()
    guards: tuple[Guard, ...] = ()
    branches: tuple[tuple[int, int], ...] = ()
    contexts: tuple[str, ...] = ()
    subst: dict[str, str] = field(default_factory=dict)
    cls: Optional[str] = None
    stack: tuple[int, ...] = ()
    via: tuple[ast.AST, ...] = ()
    #: Local functions visible here (closures), by name.
    local_defs: dict[str, ast.AST] = field(default_factory=dict)

    def but(self, **kw) -> "BuildState":
        data = dict(self.__dict__)
        data.update(kw)
        return BuildState(**data)


@dataclass(frozen=True)
class Stream:
    """The events of one function body (or the module body), in execution order."""

    owner: ast.AST
    events: tuple[Event, ...]


class StreamBuilder:
    """Walks one function body in execution order and produces its events."""

    def __init__(self, model: "Program") -> None:
        self.model = model
        self.events: list[Event] = []
        self._order = itertools.count()

    # -- statements ---------------------------------------------------------------------------------
    def build(self, body: list[ast.stmt], state: BuildState) -> list[Event]:
        self._block(body, state)
        return self.events

    def _block(self, body: list[ast.stmt], state: BuildState) -> None:
        local_defs = dict(state.local_defs)
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                local_defs[stmt.name] = stmt
        state = state.but(local_defs=local_defs)
        for stmt in body:
            if len(self.events) > MAX_EVENTS:
                return
            arms = self._stmt(stmt, state)
            if isinstance(stmt, ast.If) and not stmt.orelse and _ends_flow(stmt.body):
                # `if not boundary: continue` guards everything after it in this block, which then runs
                # only when the body did not: the two are exclusive.
                loop = state.loops[-1] if state.loops else None
                guard = Guard(stmt.test, True, _gates_window(stmt.test, loop), loop)
                state = state.but(guards=state.guards + (guard,), branches=state.branches + ((arms, 1),) if arms else state.branches)
            elif isinstance(stmt, ast.Try) and arms and any(_ends_flow(h.body) for h in stmt.handlers):
                # After an `except: ...; break` the rest of the block runs only on the no-exception path.
                state = state.but(branches=state.branches + ((arms, 0),))

    def _stmt(self, stmt: ast.stmt, state: BuildState) -> Optional[int]:
        """Emit the events of one statement; returns the branch id of an ``if``/``try`` it opened."""
        if isinstance(stmt, ast.If):
            self._expr(stmt.test, state)
            bid = next(_ids)
            loop = state.loops[-1] if state.loops else None
            acc = _gates_window(stmt.test, loop)
            g_body = Guard(stmt.test, False, acc, loop)
            g_else = Guard(stmt.test, True, acc, loop)
            self._block(stmt.body, state.but(guards=state.guards + (g_body,), branches=state.branches + ((bid, 0),)))
            if stmt.orelse:
                self._block(stmt.orelse, state.but(guards=state.guards + (g_else,), branches=state.branches + ((bid, 1),)))
            return bid
        elif isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)):
            if isinstance(stmt, ast.While):
                self._expr(stmt.test, state)
            else:
                self._expr(stmt.iter, state)
            loop = Loop(stmt, state.loops[-1] if state.loops else None)
            inner = state.but(loops=state.loops + (loop,))
            if not isinstance(stmt, ast.While):
                self._bind_loop_target(stmt, inner)
            self._block(stmt.body, inner)
            if stmt.orelse:
                self._block(stmt.orelse, state)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            contexts = list(state.contexts)
            for item in stmt.items:
                self._expr(item.context_expr, state)
                contexts.extend(self._context_kinds(item.context_expr))
            self._block(stmt.body, state.but(contexts=tuple(contexts)))
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            # The try body and each handler are treated as exclusive arms: we stay quiet about orders that
            # only happen when an exception interrupts the body.
            bid = next(_ids)
            self._block(stmt.body, state.but(branches=state.branches + ((bid, 0),)))  # type: ignore[attr-defined]
            for i, handler in enumerate(stmt.handlers):  # type: ignore[attr-defined]
                self._block(handler.body, state.but(branches=state.branches + ((bid, i + 1),)))
            self._block(stmt.orelse, state.but(branches=state.branches + ((bid, 0),)))  # type: ignore[attr-defined]
            self._block(stmt.finalbody, state)  # type: ignore[attr-defined]
            return bid
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return  # definitions run nothing; local functions are inlined where called
        elif isinstance(stmt, ast.Assign):
            self._expr(stmt.value, state)
            for target in stmt.targets:
                self._assign_target(target, stmt.value, state)
        elif isinstance(stmt, ast.AugAssign):
            self._expr(stmt.value, state)
        elif isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:
                self._expr(stmt.value, state)
        elif hasattr(ast, "Match") and isinstance(stmt, ast.Match):  # type: ignore[attr-defined]
            self._expr(stmt.subject, state)
            bid = next(_ids)
            for i, case in enumerate(stmt.cases):
                self._block(case.body, state.but(branches=state.branches + ((bid, i),)))
        else:
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.expr):
                    self._expr(child, state)

    def _bind_loop_target(self, stmt: ast.AST, state: BuildState) -> None:
        """``for p in model.parameters()`` remembers that ``p`` is a parameter of ``model``."""
        target = stmt.target  # type: ignore[attr-defined]
        it = stmt.iter  # type: ignore[attr-defined]
        if isinstance(target, ast.Name) and isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute):
            if it.func.attr in ("parameters",):
                root = self.resolve(receiver_key(it.func.value), state)
                state.subst[f"__param_of__{target.id}"] = root or "?"

    def _assign_target(self, target: ast.AST, value: ast.AST, state: BuildState) -> None:
        # `p.grad = None` clears gradients (the set_to_none idiom).
        if isinstance(target, ast.Attribute) and target.attr == "grad" and isinstance(value, ast.Constant) and value.value is None:
            self._emit(CLEAR, target, state, target=None, flavor="params")

    def _context_kinds(self, expr: ast.AST) -> list[str]:
        call = expr if isinstance(expr, ast.Call) else None
        func = call.func if call else expr
        q = self.model.imports.qualify(func) or ""
        name = q.rsplit(".", 1)[-1]
        kinds = []
        if name in ("no_grad", "inference_mode"):
            kinds.append(name)
        elif name == "set_grad_enabled" and call and call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value is False:
            kinds.append("no_grad")
        elif name == "enable_grad":
            kinds.append("enable_grad")
        elif name == "autocast":
            kinds.append("autocast")
        elif name in ("accumulate", "no_sync", "join"):
            recv = receiver_key(func.value) if isinstance(func, ast.Attribute) else None
            kind = self.model.objects.kind(recv)
            if name == "accumulate" and kind in (K.ACCELERATOR, None):
                kinds.append("accumulate")
            elif name == "no_sync":
                kinds.append("no_sync")
        elif q.endswith("dist_autograd.context") or q.endswith("distributed.autograd.context"):
            kinds.append("dist_autograd")
        return kinds

    # -- expressions ----------------------------------------------------------------------------------
    def _expr(self, expr: ast.AST, state: BuildState) -> None:
        """Visit calls in evaluation order: receivers and arguments before the call itself."""
        if isinstance(expr, (ast.Lambda, ast.FunctionDef)):
            return
        if isinstance(expr, ast.Call):
            if isinstance(expr.func, ast.Attribute):
                self._expr(expr.func.value, state)
            for a in expr.args:
                self._expr(a, state)
            for kw in expr.keywords:
                self._expr(kw.value, state)
            self._call(expr, state)
            return
        for child in ast.iter_child_nodes(expr):
            self._expr(child, state)

    def resolve(self, key: Optional[str], state: BuildState) -> Optional[str]:
        if key is None:
            return None
        head, dot, rest = key.partition(".")
        bare = head.rstrip("[]")
        if bare in state.subst:
            return state.subst[bare] + head[len(bare):] + (dot + rest if dot else "")
        return key

    def _emit(self, kind: str, node: ast.AST, state: BuildState, **kw) -> Event:
        ev = Event(
            kind=kind,
            node=node,
            order=next(self._order),
            loops=state.loops,
            guards=state.guards,
            branches=state.branches,
            contexts=state.contexts,
            via=state.via,
            **kw,
        )
        self.events.append(ev)
        return ev

    def _call(self, call: ast.Call, state: BuildState) -> None:
        model = self.model
        func = call.func
        q = model.imports.qualify(func) or ""
        attr = func.attr if isinstance(func, ast.Attribute) else None
        recv = self.resolve(receiver_key(func.value), state) if isinstance(func, ast.Attribute) else None
        kind = model.objects.kind(recv) if recv else None
        name = q.rsplit(".", 1)[-1]

        if attr == "backward":
            if kind == K.ACCELERATOR or last_part(recv) in ("accelerator", "fabric"):
                self._emit(BACKWARD, call, state, arg=call.args[0] if call.args else None, flavor="accelerate" if "fabric" not in (recv or "") else "fabric", target=recv)
            elif kind == K.ENGINE:
                self._emit(BACKWARD, call, state, arg=call.args[0] if call.args else None, flavor="deepspeed", target=recv)
            elif q.endswith("autograd.backward") and ("dist" in q or "distributed" in q):
                self._emit(BACKWARD, call, state, arg=call.args[1] if len(call.args) > 1 else None, flavor="dist")
            elif q.endswith("autograd.backward"):
                self._emit(BACKWARD, call, state, arg=call.args[0] if call.args else None, flavor="autograd")
            else:
                self._emit(BACKWARD, call, state, arg=func.value, flavor="tensor")  # type: ignore[union-attr]
            return
        if name == "manual_backward" and call.args:
            self._emit(BACKWARD, call, state, arg=call.args[0], flavor="lightning")
            return
        if attr == "zero_grad" or (name == "zero_grad" and recv is None):
            if kind in (K.OPTIMIZER, K.DIST_OPTIMIZER):
                self._emit(CLEAR, call, state, target=recv, flavor="optimizer")
            elif kind == K.ENGINE:
                self._emit(CLEAR, call, state, target=recv, flavor="engine")
            else:
                self._emit(CLEAR, call, state, target=recv or "self", flavor="module")
            return
        if attr in ("zero_", "fill_") and isinstance(func, ast.Attribute):
            inner = func.value
            while isinstance(inner, ast.Attribute) and inner.attr in ("data",):
                inner = inner.value
            if isinstance(inner, ast.Attribute) and inner.attr == "grad":
                self._emit(CLEAR, call, state, target=None, flavor="params")
                return
        if name in ("_foreach_zero_",):
            self._emit(CLEAR, call, state, target=None, flavor="params")
            return
        if attr == "step":
            self._step(call, recv, kind, state)
            return
        if name in ("clip_grad_norm_", "clip_grad_value_", "clip_grad_norm", "clip_gradients", "clip_grad_value"):
            flavor = "torch" if q.startswith("torch") else ("accelerate" if kind == K.ACCELERATOR else "other")
            self._emit(CLIP, call, state, target=recv, flavor=flavor)
            return
        if attr == "unscale_" and call.args:
            self._emit(UNSCALE, call, state, target=self.resolve(receiver_key(call.args[0]), state), flavor=recv or "")
            return
        if attr in ("eval", "train") and not call.keywords and recv is None and isinstance(func, ast.Attribute):
            # `model.to(device).train()`: the mode switch applies to the module at the head of the chain.
            base = K.unwrap_moves(func.value)
            if isinstance(base, ast.Call) and isinstance(base.func, ast.Attribute) and base.func.attr in K._MOVES:
                recv = self.resolve(receiver_key(base.func.value), state)
        if attr in ("eval", "train") and not call.keywords and recv:
            train = attr == "train" and not (call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value is False)
            self._emit(TRAIN if train else EVAL, call, state, target=recv)
            return
        if attr == "forward" and kind == K.MODEL:
            self._emit(FORWARD, call, state, target=recv)
        else:
            # `model(x)`, `self.model(x)`: the called object itself is the model.
            callee = self.resolve(receiver_key(func), state)
            if callee and model.objects.kind(callee) == K.MODEL and not _NOT_A_MODEL_CALL.match(last_part(callee)):
                if not (isinstance(func, ast.Name) and model.objects.get(callee) is None and _names_a_definition(model, func.id)):
                    self._emit(FORWARD, call, state, target=callee)
        self._maybe_inline(call, state)

    def _step(self, call: ast.Call, recv: Optional[str], kind: Optional[str], state: BuildState) -> None:
        if kind == K.SCALER:
            opt = self.resolve(receiver_key(call.args[0]), state) if call.args else None
            self._emit(STEP, call, state, target=opt, flavor="scaler")
            return
        if kind == K.OPTIMIZER:
            if call.args:
                closure = self._closure(call.args[0], state)
                if closure is not None:
                    self._inline(closure, call, [], state)
            elif any(kw.arg == "closure" for kw in call.keywords):
                closure = self._closure(next(kw.value for kw in call.keywords if kw.arg == "closure"), state)
                if closure is not None:
                    self._inline(closure, call, [], state)
            self._emit(STEP, call, state, target=recv, flavor="optimizer", arg=call.args[0] if call.args else None)
        elif kind == K.DIST_OPTIMIZER:
            self._emit(STEP, call, state, target=recv, flavor="dist")
        elif kind == K.SCHEDULER:
            self._emit(SCHED_STEP, call, state, target=recv, arg=call.args[0] if call.args else None)
        elif kind == K.ENGINE:
            self._emit(ENGINE_STEP, call, state, target=recv)

    def _closure(self, expr: ast.AST, state: BuildState) -> Optional[ast.AST]:
        if isinstance(expr, ast.Name):
            return state.local_defs.get(expr.id) or self.model.functions.get(expr.id)
        return None

    # -- helpers from the same file ----------------------------------------------------------------
    def _maybe_inline(self, call: ast.Call, state: BuildState) -> None:
        if len(state.stack) >= MAX_INLINE_DEPTH:
            return
        func = call.func
        target: Optional[ast.AST] = None
        if isinstance(func, ast.Name):
            target = state.local_defs.get(func.id) or self.model.functions.get(func.id)
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in ("self", "cls"):
            target = self.model.method(state.cls, func.attr)
        if target is None or id(target) in state.stack or not self.model.is_relevant(target):
            return
        self._inline(target, call, list(call.args), state, keywords=call.keywords, method=isinstance(func, ast.Attribute))

    def _inline(self, fn: ast.AST, call: ast.Call, args: list[ast.AST], state: BuildState, keywords=(), method: bool = False) -> None:
        params = [a.arg for a in fn.args.posonlyargs + fn.args.args]  # type: ignore[attr-defined]
        if method and params and params[0] in ("self", "cls"):
            params = params[1:]
        subst = dict(state.subst)
        # Inside the helper, its parameters stand for the caller's arguments.
        for p in params:
            subst.pop(p, None)
        for p, a in zip(params, args):
            key = self.resolve(receiver_key(a), state)
            if key and key != p:
                subst[p] = key
        for kw in keywords:
            if kw.arg:
                key = self.resolve(receiver_key(kw.value), state)
                if key and key != kw.arg:
                    subst[kw.arg] = key
        cls = self.model.class_of(fn) or state.cls
        inner = state.but(subst=subst, cls=cls, stack=state.stack + (id(fn),), via=state.via + (call,), local_defs={})
        self._block(fn.body, inner)  # type: ignore[attr-defined]
