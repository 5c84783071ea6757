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

from doctor.analysis.index import child_fields, nodes_under
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
    #: For the implicit loop around a function that runs once per iteration (an ignite update function, a
    #: trainer's ``run_step``): why it does. ``node`` is then the function.
    implicit: Optional[str] = None

    @property
    def where(self) -> str:
        """``this loop (line 12)``, or for an implicit loop the reason the function repeats."""
        if self.implicit:
            return f"`{getattr(self.node, 'name', 'this function')}()`, which {self.implicit}"
        return f"this loop (line {self.node.lineno})"

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
                nodes = list(nodes_under(part))  # any match will do: the order does not matter
                text.extend(n.id for n in nodes if isinstance(n, ast.Name))
                text.extend(n.attr for n in nodes if isinstance(n, ast.Attribute))
        return any(MICRO_LOOP.search(t) for t in text)


@dataclass(frozen=True, eq=False)
class Guard:
    test: ast.AST
    negated: bool
    accumulation: bool
    #: Innermost loop at the point where the condition was tested.
    loop: Optional[Loop]
    id: int = field(default_factory=lambda: next(_ids))
    #: The id of the ``if`` whose arms this condition selects (see ``Event.branches``), when it has arms.
    branch: Optional[int] = None
    #: Decided once before the loop runs (which of several functions a name was bound to).
    fixed: bool = False

    @property
    def mode_switch(self) -> bool:
        """A condition that cannot change between iterations of its loop (``if args.accum_freq == 1``)."""
        return self.fixed or is_mode_switch(self.test, self.loop)


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
    #: The file the event's node belongs to when it was inlined from another file of the project (a loss
    #: scaler in ``utils/misc.py``); None for the file being analysed.
    program: Optional["Program"] = None
    #: How many of ``via``'s call sites lie in the file being analysed (the rest are in ``program``).
    local_via: int = 0
    #: For a backward inlined from a helper whose parameter carries the loss (``def backward(self, loss):
    #: self.scaler.scale(loss).backward()``): the caller's expression for it, in the stream's own function.
    arg_here: Optional[ast.AST] = None

    @property
    def loop(self) -> Optional[Loop]:
        return self.loops[-1] if self.loops else None

    @property
    def foreign(self) -> bool:
        return self.program is not None

    @property
    def loss_here(self) -> tuple[Optional[ast.AST], ast.AST]:
        """``(expression, where)`` to judge this backward's loss at: the caller's argument when the backward ran
        in a helper on one of its parameters, else the backward's own argument at the backward."""
        if self.arg_here is not None:
            return self.arg_here, self.arg_here
        return self.arg, self.node

    @property
    def line_ref(self) -> str:
        """``line 12``, or ``misc.py:25`` for an event of another file."""
        line = getattr(self.node, "lineno", 0)
        if self.program is None or not self.program.path:
            return f"line {line}"
        import os

        return f"{os.path.basename(self.program.path)}:{line}"

    @property
    def anchor(self) -> ast.AST:
        """Where this event shows in the file being analysed: its node, or for an event of another file the call
        (in this file) that led there."""
        return self.node if self.program is None else self.via[self.local_via - 1]

    def site(self, other: "Event") -> ast.AST:
        """Where this event is ordered against ``other``: the call itself when both run in the same function,
        else the helper call (in the function they share) that this event was inlined through. Order mistakes
        are reported where the order was written (in this file)."""
        depth = 0
        while depth < min(len(self.via), len(other.via)) and self.via[depth] is other.via[depth]:
            depth += 1
        if self.program is not None and depth >= self.local_via:
            return self.anchor
        return self.via[depth] if depth < len(self.via) else self.node

    def exclusive_with(self, other: "Event") -> bool:
        mine = dict(self.branches)
        return any(arm != mine[b] for b, arm in other.branches if b in mine)

    def other_mode(self, other: "Event") -> bool:
        """Do the two events sit in different arms of a mode switch (``if args.accum_freq == 1: ... else: ...``),
        so that no run executes both?"""
        mine = dict(self.branches)
        split = {b for b, arm in other.branches if b in mine and arm != mine[b]}
        return any(g.branch in split and g.mode_switch for g in (*self.guards, *other.guards))

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
        for node in nodes_under(part):  # a set: the order of the walk does not matter
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


class FunctionChoice(ast.AST):
    """A name bound to one of several local functions: ``backward_pass = amp_pass if amp else plain_pass``."""

    def __init__(self, options: list[ast.AST]) -> None:
        super().__init__()
        self.options = options


def scope_functions(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """The functions a block defines, and names it binds to them (``step = amp_step``; assigned in several
    places or through a conditional expression: a ``FunctionChoice``)."""
    defs: dict[str, ast.AST] = {}
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defs[stmt.name] = stmt
    chosen: dict[str, list[ast.AST]] = {}

    def visit(stmts: list[ast.stmt]) -> None:
        for stmt in stmts:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                values = [stmt.value.body, stmt.value.orelse] if isinstance(stmt.value, ast.IfExp) else [stmt.value]
                for v in values:
                    if isinstance(v, ast.Name) and v.id in defs:
                        chosen.setdefault(stmt.targets[0].id, []).append(defs[v.id])
            elif isinstance(stmt, ast.If):
                visit(stmt.body)
                visit(stmt.orelse)

    visit(body)
    for name, options in chosen.items():
        if name not in defs:
            unique = list({id(o): o for o in options}.values())
            defs[name] = unique[0] if len(unique) == 1 else FunctionChoice(unique)
    return defs


def _as_called(expr: ast.AST, state: "BuildState") -> ast.AST:
    """``expr`` as the caller wrote it: a bare parameter of an inlined function becomes the argument the caller
    passed (``if update_grad:`` inside a loss scaler is ``(it + 1) % accum == 0`` at the call)."""
    if isinstance(expr, ast.Name) and expr.id in state.exprs:
        return state.exprs[expr.id]
    return expr


def _loss_as_called(expr: ast.AST, state: "BuildState") -> ast.AST:
    """The caller's expression for a loss that an inlined helper backpropagates through one of its parameters
    (``scaler.scale(loss).backward()``, ``loss.backward()``)."""
    inner = expr
    while isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute) and inner.func.attr == "scale" and inner.args:
        inner = inner.args[0]
    return _as_called(inner, state) if isinstance(inner, ast.Name) else expr


def first_iteration_only(clear: "Event", loop: "Loop") -> bool:
    """`if batch_idx == 0: optimizer.zero_grad()` clears once, like a clear before the loop."""
    names = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)} if loop.target is not None else set()
    names |= {"step", "global_step", "iteration", "it", "i", "batch_idx", "idx"}
    for g in clear.guards:
        t = g.test
        if g.loop is not loop or g.negated or not isinstance(t, ast.Compare) or len(t.ops) != 1:
            continue
        if isinstance(t.ops[0], ast.Eq) and isinstance(t.left, ast.Name) and t.left.id in names:
            c = t.comparators[0]
            if isinstance(c, ast.Constant) and c.value == 0:
                return True
    return False


def _decorated_no_grad(fn: ast.AST, program: "Program") -> bool:
    """``@torch.no_grad()`` / ``@torch.inference_mode()`` (or a project wrapper named so) on a function."""
    for d in getattr(fn, "decorator_list", ()):
        name = (program.imports.qualify(d.func if isinstance(d, ast.Call) else d) or "").rsplit(".", 1)[-1]
        if name in _NO_GRAD_CTX or re.search(r"no_grad|inference_mode", name):
            if not (isinstance(d, ast.Call) and d.args and isinstance(d.args[0], ast.Constant) and d.args[0].value is False):
                return True
    return False


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
    #: Local functions visible here (closures), by name; a name bound to one of several local functions
    #: (``step = amp_step if amp else plain_step``) maps to a ``FunctionChoice``.
    local_defs: dict[str, ast.AST] = field(default_factory=dict)
    #: The file whose code is being walked when it is not the analysed one (an inlined function of a local
    #: module), and how many of ``via``'s calls are in the analysed file.
    program: Optional["Program"] = None
    local_via: int = 0
    #: For parameters of an inlined function: the caller's argument expressions (conditions such as
    #: ``if update_grad:`` are judged on what the caller passed).
    exprs: dict[str, ast.AST] = field(default_factory=dict)

    def but(self, **kw) -> "BuildState":
        data = dict(self.__dict__)
        data.update(kw)
        return BuildState(**data)


@dataclass(frozen=True)
class Stream:
    """The events of one function body (or the module body), in execution order."""

    owner: ast.AST
    events: tuple[Event, ...]


_AST = ast.AST
#: Expression nodes with no calls below them, and the context/operator tokens (no children at all).
_LEAVES = (ast.Name, ast.Constant)
_TOKENS = (ast.expr_context, ast.operator, ast.boolop, ast.unaryop, ast.cmpop)


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
        local_defs.update(scope_functions(body))
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
            test = _as_called(stmt.test, state)
            if isinstance(test, ast.Constant):
                # `if update_grad:` in a helper the caller called with the default `update_grad=True`.
                self._block(stmt.body if test.value else stmt.orelse, state)
                return None
            bid = next(_ids)
            loop = state.loops[-1] if state.loops else None
            acc = _gates_window(test, loop)
            g_body = Guard(test, False, acc, loop, branch=bid)
            g_else = Guard(test, True, acc, loop, branch=bid)
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
                contexts.extend(self._context_kinds(item.context_expr, state))
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

    def _context_kinds(self, expr: ast.AST, state: BuildState) -> list[str]:
        call = expr if isinstance(expr, ast.Call) else None
        func = call.func if call else expr
        q = self._program(state).imports.qualify(func) or ""
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
            kind = self._kind(recv, self.resolve(recv, state), state)
            if name == "accumulate" and kind in (K.ACCELERATOR, None):
                kinds.append("accumulate")
            elif name == "no_sync":
                kinds.append("no_sync")
        elif q.endswith("dist_autograd.context") or q.endswith("distributed.autograd.context"):
            kinds.append("dist_autograd")
        elif name == "catch_warnings":
            kinds.append("catch_warnings")  # the author silences a warning here (PyTorch's scheduler-order one)
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
        if isinstance(expr, _LEAVES):
            return  # nothing below a name or a constant calls anything
        # The children in ``ast.iter_child_nodes`` order, less the Load/Store contexts and operator tokens
        # (which hold no calls): this visit ran once per expression node of every walked function.
        for field_name in child_fields(type(expr)):
            value = getattr(expr, field_name, None)
            if isinstance(value, list):
                for child in value:
                    if isinstance(child, _AST) and not isinstance(child, _TOKENS):
                        self._expr(child, state)
            elif isinstance(value, _AST) and not isinstance(value, _TOKENS):
                self._expr(value, state)

    def resolve(self, key: Optional[str], state: BuildState) -> Optional[str]:
        if key is None:
            return None
        head, dot, rest = key.partition(".")
        bare = head.rstrip("[]")
        if bare in state.subst:
            return state.subst[bare] + head[len(bare):] + (dot + rest if dot else "")
        return key

    def _emit(self, kind: str, node: ast.AST, state: BuildState, **kw) -> Event:
        if kind == BACKWARD and kw.get("arg") is not None and state.via:
            here = _loss_as_called(kw["arg"], state)
            if here is not kw["arg"] and self.model.owns(here):
                kw["arg_here"] = here
        ev = Event(
            kind=kind,
            node=node,
            order=next(self._order),
            loops=state.loops,
            guards=state.guards,
            branches=state.branches,
            contexts=state.contexts,
            via=state.via,
            program=state.program,
            local_via=state.local_via if state.program is not None else len(state.via),
            **kw,
        )
        self.events.append(ev)
        return ev

    def _program(self, state: BuildState) -> "Program":
        return state.program if state.program is not None else self.model

    def _kind(self, raw: Optional[str], resolved: Optional[str], state: BuildState) -> Optional[str]:
        """The kind of the object a receiver names: by the caller's binding of the resolved key, by the
        walked file's own binding of the key as written, and last by name."""
        if not resolved:
            return None
        known = self.model.objects.get(resolved)
        if known is not None:
            return known.kind
        here = self._program(state)
        if raw and raw != resolved or here is not self.model:
            own = here.objects.get(raw) if raw else None
            if own is not None:
                return own.kind
        return self.model.objects.kind(resolved)

    def _call(self, call: ast.Call, state: BuildState) -> None:
        model = self._program(state)
        func = call.func
        q = model.imports.qualify(func) or ""
        attr = func.attr if isinstance(func, ast.Attribute) else None
        raw = receiver_key(func.value) if isinstance(func, ast.Attribute) else None
        recv = self.resolve(raw, state)
        kind = self._kind(raw, recv, state) if recv else None
        name = q.rsplit(".", 1)[-1]

        if attr == "backward" and isinstance(func, ast.Attribute) and self._own_method(func, call, state):
            self._maybe_inline(call, state)  # `self.backward(loss)`: a method of the trainer, not Tensor.backward
            return
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
        if attr == "step" and kind not in (K.OPTIMIZER, K.SCALER, K.SCHEDULER, K.ENGINE, K.DIST_OPTIMIZER) and self._own_method(func, call, state):  # type: ignore[arg-type]
            self._maybe_inline(call, state)  # `manager.step()`: a project class that steps the optimizer inside
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
            raw_callee = receiver_key(func)
            callee = self.resolve(raw_callee, state)
            if callee and self._kind(raw_callee, callee, state) == K.MODEL and not _NOT_A_MODEL_CALL.match(last_part(callee)):
                if not (isinstance(func, ast.Name) and model.objects.get(callee) is None and _names_a_definition(model, func.id)):
                    self._emit(FORWARD, call, state, target=callee)
        self._maybe_inline(call, state)

    def _own_method(self, func: ast.Attribute, call: ast.Call, state: BuildState) -> bool:
        """Is ``x.name(...)`` a method that a class we can read defines (``self.backward(loss)`` of a trainer,
        ``manager.step()``), rather than torch's method of that name?"""
        here = self._program(state)
        owner = here.class_of_receiver(func.value, call)
        if owner is None:
            return False
        found = owner[0].class_method(owner[1], func.attr)
        return found is not None and owner[0].class_kind(owner[1]) not in (K.OPTIMIZER, K.SCHEDULER)

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
            found = state.local_defs.get(expr.id) or self._program(state).functions.get(expr.id)
            return None if isinstance(found, FunctionChoice) else found
        return None

    # -- helpers: same file, objects of readable classes, local modules --------------------------------
    def _maybe_inline(self, call: ast.Call, state: BuildState) -> None:
        if len(state.stack) >= MAX_INLINE_DEPTH:
            return
        here = self._program(state)
        func = call.func
        target: Optional[ast.AST] = None
        where: "Program" = here
        receiver: Optional[str] = None
        if isinstance(func, ast.Name):
            target = state.local_defs.get(func.id) or here.functions.get(func.id)
            if isinstance(target, FunctionChoice):
                # One of several local functions, chosen once (by config): each is one exclusive possibility.
                bid = next(_ids)
                for i, option in enumerate(target.options):
                    if id(option) not in state.stack and where.is_relevant(option):
                        which = ast.Compare(left=func, ops=[ast.Is()], comparators=[ast.Name(id=getattr(option, "name", "?"), ctx=ast.Load())])
                        choice = Guard(which, False, False, None, branch=bid, fixed=True)
                        option_state = state.but(branches=state.branches + ((bid, i),), guards=state.guards + (choice,))
                        self._inline(option, call, list(call.args), option_state, keywords=call.keywords)
                return
            if target is None and func.id not in here.classes:
                imported = func.id in here.imports.sources
                found = here.resolve_name(func.id) if imported and here.module_may_train(func.id) else None
                if found is not None and isinstance(found[1], (ast.FunctionDef, ast.AsyncFunctionDef)):
                    where, target = found
                elif found is None and not imported:
                    # `loss_scaler(loss, optimizer, ...)`: an object whose class (with `__call__`) we can read.
                    owner = here.class_of_receiver(func, call)
                    if owner is not None:
                        method = owner[0].class_method(owner[1], "__call__")
                        if method is not None:
                            where, target = method
                            receiver = self.resolve(func.id, state)
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in ("self", "cls"):
            target = here.method(state.cls, func.attr)
            if target is None and state.cls in here.classes:
                found = here.class_method(here.classes[state.cls], func.attr)  # a method of a base class
                if found is not None:
                    where, target = found
        elif isinstance(func, ast.Attribute):
            # `agent.finish_episode()`, `self.optim.step()`: a method of an object whose class we can read.
            owner = here.class_of_receiver(func.value, call) if receiver_key(func.value) else None
            if owner is not None:
                found = owner[0].class_method(owner[1], func.attr)
                if found is not None:
                    where, target = found
                    receiver = self.resolve(receiver_key(func.value), state)
        if target is None or id(target) in state.stack or not where.is_relevant(target):
            return
        method = isinstance(func, ast.Attribute) or receiver is not None
        self._inline(target, call, list(call.args), state, keywords=call.keywords, method=method, program=where, receiver=receiver)

    def _inline(
        self, fn: ast.AST, call: ast.Call, args: list[ast.AST], state: BuildState, keywords=(), method: bool = False,
        program: Optional["Program"] = None, receiver: Optional[str] = None,
    ) -> None:
        params = [a.arg for a in fn.args.posonlyargs + fn.args.args]  # type: ignore[attr-defined]
        if method and params and params[0] in ("self", "cls"):
            params = params[1:]
        subst = dict(state.subst)
        exprs = dict(state.exprs)
        # Inside the helper, its parameters stand for the caller's arguments.
        for p in params:
            subst.pop(p, None)
            exprs.pop(p, None)
        for p, a in zip(params, args):
            key = self.resolve(receiver_key(a), state)
            if key and key != p:
                subst[p] = key
            exprs[p] = _as_called(a, state)
        for kw in keywords:
            if kw.arg:
                key = self.resolve(receiver_key(kw.value), state)
                if key and key != kw.arg:
                    subst[kw.arg] = key
                exprs[kw.arg] = _as_called(kw.value, state)
        # Parameters the caller did not pass hold their defaults (constant flags decide conditions).
        fargs = fn.args  # type: ignore[attr-defined]
        positional = [a.arg for a in fargs.posonlyargs + fargs.args]
        for name, default in list(zip(positional[len(positional) - len(fargs.defaults):], fargs.defaults)) + [
            (a.arg, d) for a, d in zip(fargs.kwonlyargs, fargs.kw_defaults) if d is not None
        ]:
            if name not in exprs and isinstance(default, ast.Constant) and not any(isinstance(a, ast.Starred) for a in args) and not any(kw.arg is None for kw in keywords):
                exprs[name] = default
        if receiver is not None and receiver != "self":
            subst["self"] = receiver  # `self.opt` inside the method is the caller's `agent.opt`
        elif receiver is None and method and isinstance(call.func, ast.Attribute) and not (
            isinstance(call.func.value, ast.Name) and call.func.value.id in ("self", "cls")
        ):
            key = self.resolve(receiver_key(call.func.value), state)
            if key:
                subst["self"] = key
        here = self._program(state)
        where = program if program is not None else here
        foreign = where is not self.model
        cls = where.class_of(fn) or (state.cls if where is here else None)
        contexts = state.contexts + (("no_grad",) if _decorated_no_grad(fn, where) else ())
        inner = state.but(
            subst=subst, exprs=exprs, cls=cls, stack=state.stack + (id(fn),), via=state.via + (call,), local_defs={},
            contexts=contexts,
            program=where if foreign else None,
            local_via=(state.local_via if state.program is not None else len(state.via) + 1),
        )
        self._block(fn.body, inner)  # type: ignore[attr-defined]
