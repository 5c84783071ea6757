"""What training frameworks do on the user's behalf, read from how the user's classes plug into them.

Hugging Face's ``Trainer`` runs the backward pass and the optimizer step itself; a subclass only computes the
loss (``compute_loss``). The trainer divides that loss by the number of gradient-accumulation steps unless the
subclass switches the division off (``super().__init__(..., compute_loss_func=<anything not None>)``); then
``compute_loss`` must divide by ``self.current_gradient_accumulation_steps`` (or normalise by
``num_items_in_batch``, which counts the whole window) itself.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Optional

from doctor.analysis.names import receiver_key
from doctor.analysis.program import Program

#: Hugging Face trainers (transformers and TRL) that run the accumulation loop themselves.
_HF_TRAINERS = re.compile(r"^(transformers|trl)(\.\w+)*\.(Trainer|Seq2SeqTrainer|\w+Trainer)$")
#: A factor that divides a loss for the accumulation window.
ACCUMULATION_FACTOR = re.compile(r"accum|grad_?acc|gradient_accumulation|accumulation_scale|num_items_in_batch|micro", re.I)


@dataclass(frozen=True)
class HFTrainerLoss:
    """A Hugging Face trainer subclass whose own accumulation scaling is switched off."""

    cls: ast.ClassDef
    #: The ``super().__init__(..., compute_loss_func=...)`` call that switches it off, and its file.
    switch: ast.Call
    switch_program: Program
    #: The subclass's own ``compute_loss``.
    compute_loss: ast.FunctionDef


def hf_trainers_without_scaling(program: Program) -> list[HFTrainerLoss]:
    """Classes of this file that subclass a Hugging Face trainer, switch its loss scaling off (here or in a
    readable base class) and compute the loss themselves."""
    out = []
    for cls in program.classes.values():
        if not any(isinstance(f, ast.FunctionDef) and f.name == "compute_loss" for f in cls.body):
            continue  # only a class that computes the loss itself can forget to divide it
        chain = program.class_bases(cls)
        if not any(_hf_base(p, k) for p, k in chain):
            continue
        switch = next(((p, c) for p, k in chain for c in _scaling_switches(p, k)), None)
        if switch is None or any(_divides_in_training_step(p, k) for p, k in chain):
            continue
        own = next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "compute_loss"), None)
        if own is not None:
            out.append(HFTrainerLoss(cls, switch[1], switch[0], own))
    return out


def _hf_base(program: Program, cls: ast.ClassDef) -> bool:
    return any(_HF_TRAINERS.match(program.imports.qualify(b) or "") for b in cls.bases)


def _scaling_switches(program: Program, cls: ast.ClassDef) -> list[ast.Call]:
    """``super().__init__(..., compute_loss_func=X)`` calls with ``X`` not ``None`` in ``cls``'s methods."""
    out = []
    for call in program.index.within(cls, ast.Call):
        f = call.func
        if not (isinstance(f, ast.Attribute) and f.attr == "__init__" and isinstance(f.value, ast.Call)):
            continue
        if not (isinstance(f.value.func, ast.Name) and f.value.func.id == "super"):
            continue
        for kw in call.keywords:
            # A literal or a lambda surely switches it off; a variable may hold None (the default), so it does not.
            value = kw.value
            if kw.arg == "compute_loss_func" and (isinstance(value, ast.Lambda) or isinstance(value, ast.Constant) and value.value is not None):
                out.append(call)
    return out


def _divides_in_training_step(program: Program, cls: ast.ClassDef) -> bool:
    """An own ``training_step`` that divides the loss for accumulation (the subclass scales it there)."""
    for f in cls.body:
        if isinstance(f, ast.FunctionDef) and f.name == "training_step":
            for node in program.index.within(f, ast.BinOp, ast.AugAssign):
                op = node.op
                factor = node.right if isinstance(node, ast.BinOp) else node.value
                if isinstance(op, (ast.Div, ast.Mult)) and ACCUMULATION_FACTOR.search(ast.unparse(factor)):
                    return True
    return False


def accumulation_divided(program: Program, fn: ast.AST, expr: ast.AST, depth: int = 0) -> Optional[bool]:
    """Is the loss ``expr`` (in ``fn``) divided for the accumulation window?

    True: every term of it is divided (or multiplied) by an accumulation-named factor on its way; False: some
    term surely is not (a model's output, a loss function's value, a sum with an undivided term); None: part of
    it is out of sight (a method of a base class we cannot read, ``super()``, a parameter)."""
    return _divided(program, fn, expr, depth, set())


def _all(parts: list[Optional[bool]]) -> Optional[bool]:
    if False in parts:
        return False
    return True if parts and all(p is True for p in parts) else None


def _divided(program: Program, fn: ast.AST, expr: ast.AST, depth: int, seen: set[int]) -> Optional[bool]:
    if depth > 12 or id(expr) in seen:
        return None
    seen = seen | {id(expr)}
    again = lambda e: _divided(program, fn, e, depth + 1, seen)  # noqa: E731
    if isinstance(expr, ast.BinOp):
        if isinstance(expr.op, ast.Div):
            return True if _accumulation_factor(program, fn, expr.right) else again(expr.left)
        if isinstance(expr.op, ast.Mult):
            if _accumulation_factor(program, fn, expr):
                return True
            parts = [again(expr.left), again(expr.right)]
            return True if True in parts else (False if False in parts else None)
        if isinstance(expr.op, (ast.Add, ast.Sub)):
            return _all([again(expr.left), again(expr.right)])
        return again(expr.left)
    if isinstance(expr, ast.UnaryOp):
        return again(expr.operand)
    if isinstance(expr, ast.IfExp):
        return _all([again(expr.body), again(expr.orelse)])
    if isinstance(expr, ast.Tuple):
        return again(expr.elts[0]) if expr.elts else None
    if isinstance(expr, (ast.Subscript, ast.Attribute)):
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self":
            return None
        return again(expr.value)
    if isinstance(expr, ast.Name):
        return _name_divided(program, fn, expr, depth, seen)
    if isinstance(expr, ast.Call):
        f = expr.func
        if isinstance(f, ast.Attribute) and f.attr in ("mean", "sum", "float", "to", "clone", "contiguous", "squeeze", "clamp"):
            return again(f.value)
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call) and isinstance(f.value.func, ast.Name) and f.value.func.id == "super":
            return None  # the library's own method: it may divide
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self":
            owner = program.class_of_receiver(f.value, expr)
            found = owner[0].class_method(owner[1], f.attr) if owner is not None else None
            if found is None:
                return None
            rets = [r.value for r in found[0].index.within(found[1], ast.Return) if r.value is not None and found[0].enclosing_function(r) is found[1]]
            return _all([_divided(found[0], found[1], r, depth + 1, seen) for r in rets]) if rets else None
        return False  # a loss function or a model: what it returns is not divided for the window
    return None


def _name_divided(program: Program, fn: ast.AST, name: ast.Name, depth: int, seen: set[int]) -> Optional[bool]:
    """The value ``name`` holds where it is read: its last assignment, and the ones an ``if`` may have made
    instead (each alternative must be divided)."""
    binds = sorted(_bindings_before(program, fn, name), key=lambda n: (n.lineno, n.col_offset))
    if not binds:
        return None
    parts: list[Optional[bool]] = []
    blocks: set[tuple[int, str]] = set()
    for bind in reversed(binds):
        block = _block_of(program, bind)
        if block in blocks:
            continue  # a later assignment in the same block replaced this one on that path
        blocks.add(block)
        if isinstance(bind, ast.AugAssign):
            if isinstance(bind.op, (ast.Div, ast.Mult)) and _accumulation_factor(program, fn, bind.value):
                parts.append(True)
                break
            if isinstance(bind.op, (ast.Add, ast.Sub)):
                parts.append(_divided(program, fn, bind.value, depth + 1, seen))
            continue
        value = bind.value
        if value is None or isinstance(getattr(bind, "targets", [None])[0], (ast.Tuple, ast.List)):
            parts.append(None if value is None or not isinstance(value, ast.Call) else _divided(program, fn, value, depth + 1, seen))
        else:
            parts.append(_divided(program, fn, value, depth + 1, seen))
        if not _conditional(program, fn, bind):
            break
    return _all(parts)


def _block_of(program: Program, stmt: ast.AST) -> tuple[int, str]:
    parent = program.index.parent(stmt)
    for field in ("body", "orelse", "finalbody", "handlers"):
        block = getattr(parent, field, None)
        if isinstance(block, list) and any(s is stmt for s in block):
            return id(parent), field
    return id(parent), ""


def _conditional(program: Program, fn: ast.AST, node: ast.AST) -> bool:
    for anc in program.index.ancestors(node):
        if anc is fn:
            return False
        if isinstance(anc, (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.ExceptHandler)):
            return True
    return False


def _accumulation_factor(program: Program, fn: ast.AST, factor: ast.AST) -> bool:
    """``factor`` is (or is a name bound to) an accumulation count: ``self.current_gradient_accumulation_steps``,
    ``normalizer = self.current_gradient_accumulation_steps if training else 1.0``."""
    if ACCUMULATION_FACTOR.search(ast.unparse(factor)):
        return True
    for name in ast.walk(factor):
        if isinstance(name, ast.Name):
            for bind in _bindings_before(program, fn, name):
                value = getattr(bind, "value", None)
                if value is not None and ACCUMULATION_FACTOR.search(ast.unparse(value)):
                    return True
    return False


def _bindings_before(program: Program, fn: ast.AST, name: ast.Name) -> list[ast.AST]:
    line = getattr(name, "lineno", 10**9)
    return [
        n for n in program.index.within(fn, ast.Assign, ast.AugAssign, ast.AnnAssign)
        if program.enclosing_function(n) is fn and n.lineno < line
        and any(receiver_key(t) == name.id or (isinstance(t, (ast.Tuple, ast.List)) and any(receiver_key(e) == name.id for e in t.elts))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))
    ]


def _model_call(call: ast.Call) -> bool:
    f = call.func
    name = receiver_key(f) or ""
    return bool(re.search(r"(^|\.)(model|module|policy|student)$", name))


def _params(fn: ast.AST) -> set[str]:
    args = getattr(fn, "args", None)
    if args is None:
        return set()
    return {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
