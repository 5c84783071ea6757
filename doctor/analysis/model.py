"""The training-loop model of one file, shared by every rule.

Built lazily and once per file: imports, object kinds, functions and methods, and one event stream per
function (helpers inlined). Rules ask it questions (``training_iterations()``, ``accumulation_of(step)``,
``clears(optimizer, event)``, ``loss_status(backward)``) instead of walking the tree themselves.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator, Optional

from doctor.analysis import objects as K
from doctor.analysis.data import DataFlow
from doctor.analysis.events import BACKWARD, CLEAR, STEP, BuildState, Event, Guard, Loop, Stream, StreamBuilder, first_iteration_only, scope_functions
from doctor.analysis.modes import Modes
from doctor.analysis.names import dotted_name, last_part, receiver_key
from doctor.analysis.program import RELEVANT_ATTRS, Program
from doctor.analysis.values import ValueTable


@dataclass
class Accumulation:
    """An optimizer step that runs once per accumulation window of several micro-steps."""

    step: Event
    #: The condition that gates the step (modulo form), or None for an inner micro-step loop.
    guard: Optional[Guard]
    #: The loop whose iterations are the micro-steps.
    micro_loop: Loop
    #: The backward calls that run on micro-steps.
    backwards: tuple[Event, ...]


class TrainingModel(Program):
    """The training-loop model of one file: the ``Program`` tables plus event streams, accumulation windows,
    loss dataflow and the facets (modes, data, values)."""

    @cached_property
    def modes(self) -> Modes:
        """Evaluation functions, no_grad regions and mode-dependent (dropout/batch-norm) models."""
        return Modes(self, lambda: self.streams)

    @cached_property
    def data(self) -> DataFlow:
        """DataLoader, sampler and dataset constructions, followed through assignments and parameters."""
        return DataFlow(self)

    @cached_property
    def values(self) -> ValueTable:
        """Value provenance (softmax/sigmoid/detach/model outputs through assignments): see ``values.py``."""
        return ValueTable(self, self.all_events)

    # -- streams ---------------------------------------------------------------------------------------
    @cached_property
    def streams(self) -> list[Stream]:
        out = []
        owners: list[tuple[ast.AST, Optional[str]]] = [(self.tree, None)]
        if not any(a.attr in RELEVANT_ATTRS for a in self.index.of(ast.Attribute)):
            return []  # nothing in this file backpropagates, steps or clears: no training loop to model
        for node in self.index.of(ast.FunctionDef, ast.AsyncFunctionDef):
            owners.append((node, self.class_of(node)))
        for owner, cls in owners:
            if owner is not self.tree and not self.is_relevant(owner):
                continue
            body = owner.body if owner is not self.tree else [s for s in self.tree.body]
            builder = StreamBuilder(self)
            closure = self._enclosing_defs(owner)
            state = BuildState(cls=cls, stack=(id(owner),), local_defs=closure)
            events = builder.build(body, state)
            if owner is not self.tree and _steps_outside_loops(events):
                why = self.runs_per_iteration(owner)
                if why is not None:
                    # Called once per iteration from elsewhere: its body is one iteration of an implicit loop.
                    builder = StreamBuilder(self)
                    events = builder.build(body, BuildState(cls=cls, stack=(id(owner),), loops=(Loop(owner, None, implicit=why),), local_defs=closure))
            if events:
                out.append(Stream(owner, tuple(events)))
        return out

    @cached_property
    def _anchors(self) -> dict[int, ast.AST]:
        """For nodes of other files that events were inlined from: the call in this file that led there."""
        out: dict[int, ast.AST] = {}
        for ev in self.all_events():
            if ev.program is None:
                continue
            for node in (ev.node, ev.arg, *(g.test for g in ev.guards)):
                if node is not None:
                    out.setdefault(id(node), ev.anchor)
        return out

    def anchor_of(self, node: ast.AST) -> ast.AST:
        """Where a node of another file shows in this one (the call that reached it); the node itself when local."""
        if self.owns(node):
            return node
        found = self._anchors.get(id(node))
        if found is not None:
            return found
        for ev in self.all_events():
            if ev.program is not None and ev.program.owns(node):
                return ev.anchor
        return self.tree.body[0] if self.tree.body else node

    def _enclosing_defs(self, fn: ast.AST) -> dict[str, ast.AST]:
        """The functions a nested function sees from the functions around it (closures)."""
        chain = []
        cur = self.enclosing_function(fn) if fn is not self.tree else self.tree
        while cur is not self.tree:
            chain.append(cur)
            cur = self.enclosing_function(cur)
        out: dict[str, ast.AST] = {}
        for scope in reversed(chain):
            out.update(scope_functions(scope.body))  # type: ignore[attr-defined]
        return out

    def all_events(self) -> Iterator[Event]:
        for s in self.streams:
            yield from s.events

    def iteration_scopes(self) -> Iterator[tuple[Optional[Loop], list[Event]]]:
        """For each stream: the events grouped by their innermost loop (None: outside any loop)."""
        for stream in self.streams:
            groups: dict[Optional[int], tuple[Optional[Loop], list[Event]]] = {}
            for ev in stream.events:
                loop = ev.loop
                if ev.kind == CLEAR and loop is not None and _clears_every_parameter(ev, loop):
                    loop = loop.parent  # `for p in model.parameters(): p.grad = None` is one clearing step
                groups.setdefault(loop.id if loop else None, (loop, []))[1].append(ev)
            yield from groups.values()

    def loop_views(self) -> Iterator[tuple[Loop, list[Event]]]:
        """Each loop with every event of one of its iterations (nested loops included), in order."""
        for stream in self.streams:
            seen: dict[int, tuple[Loop, list[Event]]] = {}
            for ev in stream.events:
                for loop in ev.loops:
                    seen.setdefault(loop.id, (loop, []))[1].append(ev)
            yield from seen.values()

    # -- objects -----------------------------------------------------------------------------------------
    def same_optimizer(self, a: Optional[str], b: Optional[str], stepped: set[str] = frozenset()) -> bool:
        """Can ``a`` and ``b`` be the same optimizer? Unknown counts as yes (we stay quiet when unsure)."""
        if a is None or b is None or a == b:
            return True
        ia, ib = self.info(a), self.info(b)
        if ia is not None and ib is not None and ia.node is not None and ib.node is not None:
            return ia.node is ib.node
        if a in stepped and b in stepped:
            return False
        return True

    def modules_related(self, module: str, roots: frozenset[str]) -> bool:
        """Is module ``module`` one of ``roots`` (an optimizer's parameter owners), part of one, or a wrapper of one?"""
        if module in ("self", "?"):
            return True
        names = {module} | self._wrapped(module)
        for n in names:
            for r in roots:
                if n == r or r.startswith(n + ".") or n.startswith(r + "."):
                    return True
                if r in self._wrapped(n) or n in self._wrapped(r):
                    return True
        return False

    def _wrapped(self, key: str) -> set[str]:
        """Keys that ``key`` wraps or is wrapped by (``model = DDP(net)``, ``model = torch.compile(net)``)."""
        out: set[str] = set()
        info = self.info(key)
        if info is not None and isinstance(info.node, ast.Call):
            for a in info.node.args[:1]:
                k = receiver_key(a)
                if k and self._wraps(info.node, k):
                    out.add(k)
        for other, oinfo in self.objects.objects.items():
            if isinstance(oinfo.node, ast.Call) and oinfo.node.args and receiver_key(oinfo.node.args[0]) == key:
                if self._wraps(oinfo.node, key):
                    out.add(other)
        return out

    def _wraps(self, ctor: ast.Call, inner: str) -> bool:
        """Does ``ctor`` wrap the module ``inner`` (``DDP(net)``, ``torch.compile(net)``, ``EMA(model)``), rather
        than take some other first argument (``Generator(ngpu)``)?"""
        name = (self.imports.qualify(ctor.func) or "").rsplit(".", 1)[-1]
        if name in _WRAPPER_CTORS or name in K._PASS_THROUGH:
            return True
        return self.objects.kind(inner) == K.MODEL

    def clears(self, optimizer: Optional[str], ev: Event, stepped: set[str] = frozenset()) -> bool:
        """Does event ``ev`` clear the gradients that ``optimizer`` steps on?"""
        if ev.kind != CLEAR:
            return False
        if ev.flavor in ("optimizer", "engine"):
            return self.same_optimizer(optimizer, ev.target, stepped)
        if ev.flavor == "params":
            # `for n, p in model.named_parameters(): if "predictor" in n: p.grad = None` clears only some.
            loop = ev.loop
            return not (loop is not None and _iterates_parameters(loop) and any(g.loop is loop for g in ev.guards))
        info = self.info(optimizer, at=ev.node)
        roots = info.param_roots if info is not None else None
        if roots is None or ev.target is None:
            return True
        if self.modules_related(ev.target, roots):
            return True
        # Not provably this optimizer's module: it is another one's only if another optimizer of the file is
        # built from it (GANs: `netD.zero_grad()` does not clear the generator's optimizer). A `self.model`
        # that is the constructor's `model` under another name must still count as clearing.
        return not any(
            o.kind == K.OPTIMIZER and o.param_roots and o is not info and self.modules_related(ev.target, o.param_roots)
            for o in self.objects.objects.values()
        )

    def scheduler_drives(self, scheduler: Optional[str], optimizer: Optional[str], stepped: set[str] = frozenset(), at: Optional[ast.AST] = None) -> bool:
        info = self.info(scheduler, at=at)
        if info is None or info.optimizer is None:
            return True
        return self.same_optimizer(info.optimizer, optimizer, stepped)

    def is_plateau(self, sched: Event) -> bool:
        """Schedulers whose ``step()`` order we cannot judge: metric-driven, explicitly positioned, or custom."""
        info = self.info(sched.target, at=sched.node)
        if info is not None and (info.is_plateau or info.custom_scheduler):
            return True
        if "catch_warnings" in sched.contexts:
            # The order is deliberate: PyTorch's order warning is silenced around the step (ultralytics steps at
            # the start of each epoch after setting `last_epoch` back by one). Setting `last_epoch` alone is only
            # a resume (yolov7 does it and steps after the batch loop), so it does not count.
            return True
        # `scheduler.step(val_loss)` / `scheduler.step(epoch)`: metric-driven or explicitly positioned.
        return sched.arg is not None or bool(getattr(sched.node, "keywords", None))

    # -- accumulation -------------------------------------------------------------------------------------
    def accumulation_of(self, step: Event, events: list[Event]) -> Optional[Accumulation]:
        """If ``step`` (an optimizer step) runs once per several backward passes, how.

        ``events`` are the events of the stream the step belongs to.
        """
        loop = step.loop
        if loop is None:
            return None
        level = [e for e in events if e.loop is loop]
        stepped = {e.target for e in events if e.kind == STEP and e.target}
        for guard in step.accumulation_guards(loop):
            if any(
                e.kind == STEP and e is not step and _opposite_arms(e, step, guard)
                and (self.same_optimizer(e.target, step.target, stepped) or _element_of(e, step.target))
                for e in events
            ):
                continue  # `if step % 2 == 0: opt.step() else: for o in opts: o.step()`: it steps every iteration
            # The gated block runs a backward of its own for this step (a GAN's generator every n-th
            # iteration): each step then has its own backward, and the ungated ones serve other updates.
            own = any(
                b.kind == BACKWARD and b.guarded_by(guard) and b.order < step.order and not b.exclusive_with(step)
                for b in level
            )
            micro = []
            for b in level:
                if b.kind != BACKWARD or b.guarded_by(guard):
                    continue
                opposite = _opposite_arms(b, step, guard)
                if b.exclusive_with(step) and not opposite:
                    continue
                if own and not opposite:
                    continue
                if b.order < step.order and any(
                    c.kind == CLEAR and b.order < c.order < step.order and not c.exclusive_with(step)
                    and not c.exclusive_with(b) and all(g in b.guards or g in step.guards for g in c.guards)
                    and self.clears(step.target, c, stepped)
                    for c in level
                ):
                    continue  # cleared whenever both run, between them: its gradients never reach the step
                micro.append(b)
            if micro:
                return Accumulation(step, guard, loop, tuple(micro))
        # An inner micro-step loop before the step: `for micro in range(accum): ...backward()` then step.
        inner_backs = [
            e for e in events
            if e.kind == BACKWARD and e.order < step.order and loop in e.loops and e.loop is not loop
        ]
        for b in reversed(inner_backs):
            idx = b.loops.index(loop)
            micro_loop = b.loops[idx + 1]
            if not micro_loop.looks_like_micro_steps():
                continue
            if any(e.kind == STEP and micro_loop in e.loops for e in events):
                continue
            backs = tuple(e for e in inner_backs if micro_loop in e.loops)
            return Accumulation(step, None, micro_loop, backs)
        return None

    def accumulations(self) -> Iterator[tuple[list[Event], set[str], Accumulation]]:
        """Every optimizer step that runs once per accumulation window, with its stream's events and the
        keys of the optimizers stepped there."""
        for stream in self.streams:
            events = list(stream.events)
            stepped = {e.target for e in events if e.kind == STEP and e.target}
            for s in events:
                if s.kind == STEP:
                    acc = self.accumulation_of(s, events)
                    if acc is not None:
                        yield events, stepped, acc

    def runs_every_micro_step(self, ev: Event, acc: Accumulation, events: list[Event] = ()) -> bool:
        """Does ``ev`` run on every micro-step of ``acc`` rather than once per window?"""
        if ev.in_accumulate_context:
            return False
        if acc.guard is None:
            # `if i == 0: zero_grad()` inside the micro-step loop clears once per window.
            return acc.micro_loop in ev.loops and not first_iteration_only(ev, acc.micro_loop)
        if ev.loop is not acc.micro_loop:
            return False
        if ev.accumulation_guards() or first_iteration_only(ev, acc.micro_loop):
            return False  # once per window, or once before the first one (`if i == 0: opt.zero_grad()`)
        # Under a condition that also gates an optimizer step (a final flush of a partial window:
        # `if i + 1 == len(loader): opt.step(); opt.zero_grad()`) it runs once per window too.
        own = [g for g in ev.guards if g.loop is acc.micro_loop]
        if own and any(e.kind == STEP and any(e.guarded_by(g) for g in own) for e in events):
            return False
        return not any(ev.exclusive_with(b) for b in acc.backwards)

    # -- loss dataflow -------------------------------------------------------------------------------------
    def loss_status(self, expr: Optional[ast.AST], at: ast.AST, _depth: int = 0, strict: bool = False) -> str:
        """Is the loss that ``expr`` evaluates to divided/scaled ("scaled"), a raw loss ("raw"), or unknown?

        ``strict`` is for code that computes a loss for a caller (a helper, a model's forward): there a division
        by a batch size or a multiplication by a loss weight is part of the loss, and only a factor named for
        accumulation (``/ accum_steps``) counts as scaling for the window."""
        if expr is None or _depth > 6:
            return "unknown"
        again = lambda e, a=at: self.loss_status(e, a, _depth + 1, strict)  # noqa: E731
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr in ("scale",) and expr.args:
            return again(expr.args[0])
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr in ("mean", "sum", "float", "squeeze", "clone", "contiguous", "to"):
            if expr.func.attr in ("mean", "sum") and expr.args:
                return "unknown"
            return again(expr.func.value)
        if isinstance(expr, ast.BinOp):
            if isinstance(expr.op, (ast.Div, ast.FloorDiv)):
                if strict and not _ACCUM_FACTOR.search(ast.unparse(expr.right)):
                    return again(expr.left)  # `loss / n_tokens` in a helper: a normalisation, not the window's
                return "scaled"
            if isinstance(expr.op, ast.Mult):
                for side, other in ((expr.left, expr.right), (expr.right, expr.left)):
                    if isinstance(side, ast.Constant) and isinstance(side.value, (int, float)):
                        return again(other)
                if strict:
                    if _ACCUM_FACTOR.search(ast.unparse(expr)):
                        return "scaled"
                    parts = {again(expr.left), again(expr.right)}
                    return "raw" if "raw" in parts and "scaled" not in parts else "unknown"
                return "scaled" if _mentions_scale(expr) else "unknown"
            if isinstance(expr.op, (ast.Add, ast.Sub)):
                # A sum with a raw loss term and no scaled term is not divided as a whole (`ce + 0.1 * aux`).
                parts = [again(expr.left), again(expr.right)]
                if "scaled" in parts:
                    return "scaled" if all(p == "scaled" for p in parts) else "unknown"
                if "raw" in parts:
                    return "raw"
                return "unknown"
            return "unknown"
        if isinstance(expr, ast.Attribute) and expr.attr == "loss" and isinstance(expr.value, ast.Call):
            return "raw" if again(expr.value) == "model_output" else "unknown"
        if isinstance(expr, ast.Attribute) and expr.attr == "loss" and isinstance(expr.value, ast.Name):
            # `outputs.loss` where `outputs = model(...)`: the model computed the (raw) loss.
            return "raw" if self._name_status(expr.value.id, at, _depth, strict) == "model_output" else "unknown"
        if isinstance(expr, (ast.Name, ast.Attribute)):
            key = receiver_key(expr)
            return self._name_status(key, at, _depth, strict) if key else "unknown"
        if isinstance(expr, ast.Subscript):
            base = expr.value
            if isinstance(base, ast.Call):
                st = again(base)
                return "raw" if st == "model_output" else st
            if isinstance(base, ast.Name):
                st = self._name_status(base.id, at, _depth, strict)
                return "raw" if st == "model_output" else st
            return "unknown"
        if isinstance(expr, ast.Call):
            return self._call_status(expr, at, _depth)
        return "unknown"

    def _call_status(self, call: ast.Call, at: ast.AST, depth: int) -> str:
        q = self.imports.qualify(call.func) or ""
        name = q.rsplit(".", 1)[-1]
        if name in K.LOSS_FUNCTIONS and (q.startswith("torch") or q.startswith("F.") or q.startswith("functional")):
            return "raw"
        recv = receiver_key(call.func)
        kind = self.objects.kind(recv)
        if kind == K.LOSS:
            return "raw"
        if kind == K.MODEL:
            # A model whose forward we can read and which returns the loss itself (diffusion trainers).
            ref = self.values.module_of(call.func) if depth < 4 else None
            found = ref.program.class_method(ref.cls, "forward") if ref is not None and ref.cls is not None else None
            if found is not None and hasattr(found[0], "loss_status"):
                status = found[0].returned_loss_status(found[1], depth + 1)
                if status in ("raw", "scaled"):
                    return status
            return "model_output"
        found = None
        if isinstance(call.func, ast.Name):
            fn = self.functions.get(call.func.id)
            if fn is None:
                options = self._closures(self.enclosing_function(call)).get(call.func.id, [])
                fn = options[0] if len(options) == 1 else None
            found = (self, fn) if fn is not None else None
        elif isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) and call.func.value.id == "self":
            fn = self.method(None, call.func.attr)
            if fn is None:
                owner = self.class_of_receiver(call.func.value, call)
                found = owner[0].class_method(owner[1], call.func.attr) if owner is not None else None
            else:
                found = (self, fn)
        if found is not None and depth < 4 and hasattr(found[0], "returned_loss_status"):
            return found[0].returned_loss_status(found[1], depth + 1)
        return "unknown"

    def returned_loss_status(self, fn: ast.AST, depth: int = 0) -> str:
        """What ``fn`` (a helper, a forward) returns, judged strictly (see ``loss_status``)."""
        statuses = {
            self.loss_status(r.value, r, depth, strict=True)
            for r in self.index.within(fn, ast.Return)
            if r.value is not None and self.enclosing_function(r) is fn
        }
        if statuses == {"scaled"}:
            return "scaled"
        if "scaled" in statuses:
            return "unknown"
        if "raw" in statuses and statuses <= {"raw", "model_output"}:
            return "raw"
        return "unknown"

    def _name_status(self, name: str, at: ast.AST, depth: int, strict: bool = False) -> str:
        fn = self.enclosing_function(at)
        line = getattr(at, "lineno", 0)
        best: Optional[ast.AST] = None
        best_line = -1
        scaled_after: list[int] = []
        for node in self.index.within(fn, ast.Assign, ast.AnnAssign, ast.AugAssign):
            if self.index.enclosing_function(node) is not fn:
                continue
            lineno = getattr(node, "lineno", 0)
            if lineno >= line and not (isinstance(node, ast.AugAssign) and lineno == line):
                continue
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if receiver_key(t) == name and lineno > best_line:
                        best, best_line = node.value, lineno
                    elif isinstance(t, (ast.Tuple, ast.List)) and any(receiver_key(e) == name for e in t.elts) and lineno > best_line:
                        # `logits, loss = model(x, y)`: the element named like a loss, returned by the model, is
                        # its raw loss. Other unpackings are unknown.
                        raw = "loss" in name.rsplit(".", 1)[-1].lower() and isinstance(node.value, ast.Call) and self._call_status(node.value, node, depth + 1) == "model_output"
                        best, best_line = (_RAW_MARK if raw else ast.Constant(value=None)), lineno
            elif isinstance(node, ast.AnnAssign) and receiver_key(node.target) == name and node.value is not None:
                if lineno > best_line:
                    best, best_line = node.value, lineno
            elif isinstance(node, ast.AugAssign) and receiver_key(node.target) == name:
                if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mult)) and (not strict or _ACCUM_FACTOR.search(ast.unparse(node.value))):
                    scaled_after.append(lineno)
        if any(l > best_line for l in scaled_after):
            return "scaled"
        if best is None:
            return "unknown"
        if best is _RAW_MARK:
            return "raw"
        return self.loss_status(best, best, depth + 1, strict)


_RAW_MARK = ast.Constant(value="raw loss")
_WRAPPER_CTORS = {"DistributedDataParallel", "DataParallel", "DDP", "FullyShardedDataParallel", "FSDP", "compile", "ModelEMA", "EMA"}
_PARAM_ITER = re.compile(r"param", re.I)


def _clears_every_parameter(ev: Event, loop: Loop) -> bool:
    """A ``p.grad = None`` / ``p.grad.zero_()`` run unconditionally for every parameter of a loop over parameters."""
    if ev.flavor != "params" or any(g.loop is loop for g in ev.guards):
        return False
    return _iterates_parameters(loop)


def _iterates_parameters(loop: Loop) -> bool:
    it = loop.iter
    if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute):
        return it.func.attr in ("parameters", "named_parameters")
    key = receiver_key(it) if it is not None else None
    return bool(key and _PARAM_ITER.search(key.rsplit(".", 1)[-1]))


def _steps_outside_loops(events: list[Event]) -> bool:
    """A backward pass and an optimizer step that run outside any loop of the function."""
    return any(e.kind == BACKWARD and not e.loops for e in events) and any(e.kind == STEP and not e.loops for e in events)


def _element_of(ev: Event, key: Optional[str]) -> bool:
    """``ev`` steps the loop variable of a loop over the collection ``key`` belongs to: ``for opt in optimizers:
    opt.step()`` steps ``optimizers[1]`` too."""
    base = (key or "").split("[", 1)[0]
    for loop in ev.loops:
        names = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)} if loop.target is not None else set()
        if ev.target in names and loop.iter is not None and any(receiver_key(n) == base for n in ast.walk(loop.iter) if isinstance(n, (ast.Name, ast.Attribute))):
            return True
    return False


def _opposite_arms(a: Event, b: Event, guard: Guard) -> bool:
    """``a`` runs in the else-arm of the very condition that gates ``b`` (the `no_sync` micro-step arm)."""
    return any(g.test is guard.test and g.negated != guard.negated for g in a.guards)


#: Factors named for the accumulation window (what dividing "for accumulation" looks like).
_ACCUM_FACTOR = re.compile(r"accum|grad_?acc|micro|n_?steps|num_?steps|gradient_accumulation|accumulation_scale", re.I)
_SCALE_NAME = re.compile(r"accum|grad_?acc|micro|n_?steps|num_?steps|scale|inv|weight|factor|coef|ratio", re.I)


def _mentions_scale(expr: ast.AST) -> bool:
    for node in ast.walk(expr):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            return True
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name and _SCALE_NAME.search(name):
            return True
    return False


__all__ = ["TrainingModel", "Accumulation", "Stream", "dotted_name", "last_part"]
