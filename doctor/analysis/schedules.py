"""Learning-rate schedules: the unit a scheduler's horizon is counted in, and which loops run per epoch or per batch.

A scheduler's horizon (``StepLR(step_size=...)``, ``CosineAnnealingLR(T_max=...)``,
``get_cosine_schedule_with_warmup(num_training_steps=...)``) is a number of ``step()`` calls. Whether that number
means epochs or optimizer steps is read off what the code computes it from: ``args.epochs`` counts epochs,
``len(train_loader) * epochs`` or ``max_iters`` counts steps, a bare ``30`` is a literal whose unit is a guess.
Names are followed through the assignments of the function that builds the scheduler, and a scheduler built by a
helper (``build_scheduler(cfg, opt)``, in this file or a local module) is read at the constructor inside it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Optional

from doctor.analysis import objects as K
from doctor.analysis.modes import loop_iterated
from doctor.analysis.names import receiver_key
from doctor.analysis.program import Program

EPOCHS = "epochs"
STEPS = "steps"
LITERAL = "literal"

#: For each scheduler (torch and transformers): its horizon parameters with their positions.
HORIZON_PARAMS: dict[str, tuple[tuple[str, int], ...]] = {
    "StepLR": (("step_size", 1),),
    "MultiStepLR": (("milestones", 1),),
    "CosineAnnealingLR": (("T_max", 1),),
    "CosineAnnealingWarmRestarts": (("T_0", 1),),
    "LinearLR": (("total_iters", 3),),
    "ConstantLR": (("total_iters", 2),),
    "PolynomialLR": (("total_iters", 1),),
    "ExponentialLR": (("gamma", 1),),
    "OneCycleLR": (("total_steps", 2), ("epochs", 3), ("steps_per_epoch", 4)),
    "get_linear_schedule_with_warmup": (("num_warmup_steps", 1), ("num_training_steps", 2)),
    "get_cosine_schedule_with_warmup": (("num_warmup_steps", 1), ("num_training_steps", 2)),
    "get_cosine_with_hard_restarts_schedule_with_warmup": (("num_warmup_steps", 1), ("num_training_steps", 2)),
    "get_polynomial_decay_schedule_with_warmup": (("num_warmup_steps", 1), ("num_training_steps", 2)),
    "get_constant_schedule_with_warmup": (("num_warmup_steps", 1),),
    "get_inverse_sqrt_schedule": (("num_warmup_steps", 1),),
    "get_wsd_schedule": (("num_warmup_steps", 1),),
    "get_scheduler": (("num_warmup_steps", 2), ("num_training_steps", 3)),
}
_LIBRARIES = ("torch", "transformers", "lr_scheduler", "optim")

_STEP_TOKENS = {"steps", "iters", "iter", "iterations", "iteration", "updates", "batches", "its", "nsteps", "niters", "niter"}
_STEP_NAME = re.compile(r"^(t_total|num_training_steps|(total|max|num|n|train|training)_?steps?|(total|max|num|n)_?iters?)$", re.I)
_NEUTRAL_CALLS = {"int", "float", "round", "ceil", "floor", "max", "min", "abs", "sum", "list", "tuple", "range", "sorted"}
MAX_DEPTH = 3


@dataclass(frozen=True)
class HorizonArg:
    """One horizon argument of a scheduler constructor and the unit it counts in."""

    #: The constructor's parameter name (``T_max``).
    param: str
    #: The argument as written at the constructor.
    expr: ast.AST
    #: EPOCHS, STEPS, LITERAL, or None when nothing tells.
    unit: Optional[str]
    #: What decided the unit, in the code's words (``args.epochs``, ``len(train_loader)``, ``30``).
    evidence: str
    #: For a literal: its largest number (the last milestone, the step size).
    value: Optional[float] = None


@dataclass(frozen=True)
class Schedule:
    """A torch or transformers scheduler constructor and its horizon arguments."""

    #: ``StepLR``, ``get_cosine_schedule_with_warmup``.
    name: str
    ctor: ast.Call
    #: The file holding ``ctor`` (another file when a helper of a local module builds it).
    program: Program
    args: tuple[HorizonArg, ...]

    def of_unit(self, unit: str) -> list[HorizonArg]:
        return [a for a in self.args if a.unit == unit]


def schedule_of(program: Program, info: Optional[K.ObjectInfo]) -> Optional[Schedule]:
    """The schedule an object (from ``program.info``) was built with: a torch/transformers scheduler constructor,
    called directly or returned by a helper of this file or of a local module. None otherwise."""
    if info is None or info.kind != K.SCHEDULER or info.from_name_only or not isinstance(info.node, ast.Call):
        return None
    return _schedule_call(program, K.unwrap_moves(info.node), 0)  # type: ignore[arg-type]


def schedule_at(program: Program, key: Optional[str], at: ast.AST, _depth: int = 0) -> Optional[Schedule]:
    """The schedule of the scheduler ``key`` used at node ``at``: its binding in that function, or for a parameter
    of that function what every visible caller passes (in this file or another file of the project), when they all
    pass the same constructor."""
    if not key:
        return None
    fn = program.enclosing_function(at) if program.owns(at) else None
    head = key.split(".", 1)[0].rstrip("[]")
    if fn is not None and fn is not program.tree and head == key and head in _parameters(fn) and not program.rebinds(fn, head):
        if _depth >= 3:
            return None
        found: Optional[Schedule] = None
        for where, value in program.argument_values(fn, head):
            sub = schedule_at(where, receiver_key(value), value, _depth + 1) if receiver_key(value) else (
                _schedule_call(where, value, 0) if isinstance(value, ast.Call) else None
            )
            if sub is None or (found is not None and sub.ctor is not found.ctor):
                return None
            found = sub
        return found
    return schedule_of(program, program.info(key, at=at) if fn is not None else program.info(key))


def _parameters(fn: ast.AST) -> set[str]:
    args = getattr(fn, "args", None)
    if args is None:
        return set()
    return {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}


def _schedule_call(program: Program, call: ast.Call, depth: int) -> Optional[Schedule]:
    q = program.imports.qualify(call.func) or ""
    name = q.rsplit(".", 1)[-1]
    if name in HORIZON_PARAMS and (q.split(".")[0] in _LIBRARIES or q == name) and program.resolve(call.func) is None:
        return Schedule(name, call, program, tuple(_horizon_args(program, call, name)))
    if depth >= 2:
        return None
    found = program.resolve(call.func)
    if found is None or not isinstance(found[1], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    where, fn = found
    returns = [r for r in where.index.within(fn, ast.Return) if r.value is not None and where.enclosing_function(r) is fn]
    if len(returns) != 1:
        return None
    value = returns[0].value
    if isinstance(value, ast.Name):
        value = _single_value(where, value)
    if not isinstance(value, ast.Call):
        return None
    return _schedule_call(where, value, depth + 1)


def _single_value(program: Program, name: ast.Name) -> Optional[ast.AST]:
    values = getattr(program, "values", None)
    if values is None:
        return None
    return values.value_of(name)


def _horizon_args(program: Program, call: ast.Call, name: str) -> list[HorizonArg]:
    out = []
    starred = any(isinstance(a, ast.Starred) for a in call.args)
    for param, pos in HORIZON_PARAMS[name]:
        expr = next((kw.value for kw in call.keywords if kw.arg == param), None)
        if expr is None and not starred and pos < len(call.args):
            expr = call.args[pos]
        if expr is None:
            continue
        if name == "ExponentialLR":
            out.append(_gamma(program, expr))
            continue
        if name == "OneCycleLR" and param == "steps_per_epoch":
            out.append(HorizonArg(param, expr, STEPS, ast.unparse(expr)))
            continue
        unit, evidence, value = horizon_unit(program, expr)
        out.append(HorizonArg(param, expr, unit, evidence, value))
    return out


def _gamma(program: Program, expr: ast.AST) -> HorizonArg:
    """``ExponentialLR(gamma=...)`` has no horizon; a small literal factor is an epoch-sized decay (0.95 per step
    leaves 0.6% of the learning rate after 100 steps), and a factor computed from epochs or steps says its unit."""
    try:
        value = ast.literal_eval(expr)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        value = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return HorizonArg("gamma", expr, LITERAL if value <= 0.99 else None, ast.unparse(expr), 1.0 / max(1e-9, 1.0 - value))
    unit, evidence, _ = horizon_unit(program, expr)
    return HorizonArg("gamma", expr, unit if unit != LITERAL else None, evidence)


def horizon_unit(program: Program, expr: ast.AST, _depth: int = 0) -> tuple[Optional[str], str, Optional[float]]:
    """``(unit, evidence, value)`` of a count expression: STEPS when it is computed from a loader's length or a
    name counting steps/iterations/updates, EPOCHS when it is computed from a name counting epochs and nothing
    counting steps, LITERAL when it is a plain number (``value`` its largest), None when nothing tells."""
    steps: list[str] = []
    epochs: list[str] = []
    numbers: list[float] = []
    other = [False]
    _words(program, expr, steps, epochs, numbers, other, _depth)
    if steps:
        return STEPS, steps[0], None
    if epochs:
        return EPOCHS, epochs[0], None
    if numbers and not other[0]:
        return LITERAL, ast.unparse(expr), max(numbers)
    return None, "", None


def _words(program: Program, expr: ast.AST, steps: list, epochs: list, numbers: list, other: list, depth: int) -> None:
    if isinstance(expr, ast.Call):
        f = expr.func
        fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if fname == "len":
            steps.append(ast.unparse(expr))
            return
        if fname not in _NEUTRAL_CALLS:
            _classify_identifier(fname, ast.unparse(expr), steps, epochs, other)
        for a in list(expr.args) + [kw.value for kw in expr.keywords]:
            _words(program, a, steps, epochs, numbers, other, depth)
        return
    if isinstance(expr, ast.Attribute):
        _classify_identifier(expr.attr, ast.unparse(expr), steps, epochs, other)
        return
    if isinstance(expr, ast.Name):
        if _classify_identifier(expr.id, expr.id, steps, epochs, None):
            return
        value = _single_value(program, expr) if depth < MAX_DEPTH else None
        if value is not None and not (isinstance(value, ast.Name) and value.id == expr.id):
            _words(program, value, steps, epochs, numbers, other, depth + 1)
        else:
            other[0] = True
        return
    if isinstance(expr, ast.Constant):
        if isinstance(expr.value, (int, float)) and not isinstance(expr.value, bool):
            numbers.append(float(expr.value))
        else:
            other[0] = True
        return
    if isinstance(expr, (ast.BinOp, ast.UnaryOp, ast.List, ast.Tuple, ast.Set, ast.Subscript, ast.IfExp, ast.ListComp, ast.GeneratorExp, ast.Starred)):
        for child in ast.iter_child_nodes(expr):
            if isinstance(child, ast.expr):
                _words(program, child, steps, epochs, numbers, other, depth)
        if isinstance(expr, (ast.Subscript, ast.IfExp, ast.ListComp, ast.GeneratorExp)):
            other[0] = True
        return
    other[0] = True


def _classify_identifier(ident: str, text: str, steps: list, epochs: list, other: Optional[list]) -> bool:
    """Record ``text`` as step or epoch evidence when ``ident`` counts one of them; else mark ``other``."""
    tokens = _tokens(ident)
    if _STEP_NAME.match(ident) or any(t in _STEP_TOKENS for t in tokens):
        steps.append(text)
        return True
    if any("epoch" in t for t in tokens):
        epochs.append(text)
        return True
    if other is not None:
        other[0] = True
    return False


def _tokens(ident: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", ident)
    return [t for t in spaced.lower().split("_") if t]


# -- loops ----------------------------------------------------------------------------------------------
_LOADER_NAME = re.compile(r"loader|(^|_)dl$|(^|_)dls?_|batches|data_?iter|train_?iter|batch_?iter|dataloader", re.I)


def is_epoch_loop(loop_node: ast.AST) -> bool:
    """``for epoch in range(...)``, ``for ep in ...``, ``while epoch < max_epochs``: a loop over epochs."""
    if isinstance(loop_node, (ast.For, ast.AsyncFor)):
        target = loop_node.target
        names = [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
        if any("epoch" in n.lower() or n.lower() in ("ep", "e") for n in names):
            return True
        it = loop_node.iter
        if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id in ("range", "trange", "tqdm"):
            return any("epoch" in t for a in it.args for n in ast.walk(a) for t in _idents(n))
        return False
    if isinstance(loop_node, ast.While):
        return any("epoch" in t for n in ast.walk(loop_node.test) for t in _idents(n))
    return False


def _idents(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id.lower()]
    if isinstance(node, ast.Attribute):
        return [node.attr.lower()]
    return []


def iterates_batches(program: Program, loop_node: ast.AST) -> bool:
    """Does the ``for`` loop iterate the batches of a data loader: a ``DataLoader`` built in this file (followed
    through assignments and parameters), or a loader by name (``train_loader``, ``enumerate(dl)``)?"""
    if not isinstance(loop_node, (ast.For, ast.AsyncFor)) or is_epoch_loop(loop_node):
        return False
    it = loop_iterated(loop_node)
    if it is None:
        return False
    data = getattr(program, "data", None)
    if data is not None and program.owns(loop_node):
        found = data.loaders(it, program.enclosing_function(loop_node))
        if found:
            return True
    key = receiver_key(it)
    if key is None and isinstance(it, ast.Call):
        key = receiver_key(it.func)
    return bool(key and _LOADER_NAME.search(key.rsplit(".", 1)[-1]))


__all__ = [
    "EPOCHS", "HORIZON_PARAMS", "HorizonArg", "LITERAL", "STEPS", "Schedule", "horizon_unit", "is_epoch_loop",
    "iterates_batches", "schedule_at", "schedule_of",
]
