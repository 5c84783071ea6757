"""Tensor shapes, as far as the code shows them: how many dimensions a value has, and whether its dimension 0 is
the batch.

Static code rarely states shapes, so every answer here is "known" or ``None``. ``ndim(expr)`` reads explicit
reshapes (``x.view(b, t, c)``, ``permute``), batched matrix products (``torch.bmm``) and layers that keep the rank
of their input (``nn.Linear``), and the outputs of recurrent layers (3-D for a batched input: said so in the
answer, since the input's rank is assumed). ``batched(expr)`` says why a value's dimension 0 runs over the samples
of a batch: it is a batch drawn from a data loader, a single sample given a batch dimension (``state.unsqueeze(0)``),
a stack of samples, or a parameter every caller passes such a value for; it follows the value through the layers
and element-wise operations that keep dimension 0 (``nn.Linear``, activations, a model of the project) and stops at
anything that may move or reduce it (``view``, ``transpose``, matrix products, indexing, reductions).
``module_batched(cls)`` says whether a module class's ``forward`` receives batches, from the calls of its instances
in the same file.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

from doctor.analysis import objects as K
from doctor.analysis.modes import loop_iterated
from doctor.analysis.names import receiver_key
from doctor.analysis.program import Program
from doctor.analysis.schedules import iterates_batches

MAX_DEPTH = 8

#: Layers whose output keeps the rank and dimension 0 of their input.
RANK_KEEPING_LAYERS = {
    "Linear", "LazyLinear", "Bilinear", "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
    "ReLU", "ReLU6", "GELU", "SiLU", "ELU", "SELU", "CELU", "LeakyReLU", "PReLU", "Tanh", "Sigmoid", "Softplus",
    "Mish", "Hardswish", "Hardtanh", "LayerNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm",
    "InstanceNorm1d", "InstanceNorm2d", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "LogSigmoid",
}
#: Layers that keep dimension 0 but may change the rank.
BATCH_KEEPING_LAYERS = RANK_KEEPING_LAYERS | {
    "Flatten", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d", "Embedding", "Sequential",
}
RECURRENT_LAYERS = {"LSTM", "GRU", "RNN"}
#: Tensor methods and functions that keep every dimension (element-wise, casts, moves).
_ELEMENTWISE = {
    "to", "cuda", "cpu", "float", "half", "double", "bfloat16", "long", "int", "contiguous", "clone", "detach",
    "requires_grad_", "type", "type_as", "relu", "sigmoid", "tanh", "exp", "log", "abs", "clamp", "clamp_min", "pow",
    "sqrt", "neg", "gelu", "silu", "elu", "leaky_relu", "dropout", "normalize", "layer_norm", "softplus", "mish",
    "hardswish", "relu6", "selu", "logsigmoid", "log1p", "square", "rsqrt", "reciprocal", "mul", "add", "sub", "div",
    "masked_fill", "nan_to_num",
}
_FUNCTION_NS = {"torch", "torch.nn.functional", "F", "functional", "nn.functional"}
_BATCH_SIZE_NAME = re.compile(r"^(b|bs|n|batch|batch_size|bsz|n_batch|nbatch|num_samples|B|N)$")


@dataclass(frozen=True)
class Rank:
    """A known number of dimensions and how it is known."""

    ndim: int
    why: str
    #: Resting on an assumption (a recurrent layer's input taken to be batched).
    assumed: bool = False


class Shapes:
    """Shape facts about the expressions of one file."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.values = getattr(program, "values", None)
        self._visiting: set[int] = set()

    # -- the number of dimensions ---------------------------------------------------------------------------
    def ndim(self, expr: Optional[ast.AST], _depth: int = 0) -> Optional[Rank]:
        """The number of dimensions of ``expr`` when the code shows it, else None."""
        if expr is None or _depth > MAX_DEPTH or self.values is None:
            return None
        again = lambda e: self.ndim(e, _depth + 1)  # noqa: E731
        if isinstance(expr, ast.Name):
            value = self._value(expr)
            return again(value) if value is not None else None
        if isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Call):
            # `self.lstm(x)[0]`: a recurrent layer's output sequence.
            sl = expr.slice
            if isinstance(sl, ast.Constant) and sl.value == 0:
                return self._recurrent_output(expr.value, _depth)
            return None
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            # Broadcasting: the larger rank, when the other operand is known or a scalar-looking name/constant.
            left, right = again(expr.left), again(expr.right)
            if left is not None and right is not None:
                return left if left.ndim >= right.ndim else right
            for rank, other in ((left, expr.right), (right, expr.left)):
                if rank is not None and _scalar(other):
                    return rank
            return None
        if not isinstance(expr, ast.Call):
            return None
        func = expr.func
        q = self.program.imports.qualify(func) or ""
        ns, _, last = q.rpartition(".")
        if isinstance(func, ast.Attribute) and ns not in _FUNCTION_NS:
            attr = func.attr
            if attr in ("view", "reshape") and expr.args and not any(isinstance(a, ast.Starred) for a in expr.args):
                sizes = expr.args[0].elts if len(expr.args) == 1 and isinstance(expr.args[0], (ast.Tuple, ast.List)) else expr.args
                if len(sizes) == 1 and not isinstance(expr.args[0], (ast.Tuple, ast.List)):
                    return None  # `x.view(shape)`: unknown
                return Rank(len(sizes), f"`{ast.unparse(expr)}`")
            if attr == "permute" and expr.args and not any(isinstance(a, ast.Starred) for a in expr.args):
                sizes = expr.args[0].elts if len(expr.args) == 1 and isinstance(expr.args[0], (ast.Tuple, ast.List)) else expr.args
                return Rank(len(sizes), f"`{ast.unparse(expr)}`")
            if (attr in _ELEMENTWISE or attr in ("transpose", "softmax", "log_softmax")) and not self._layer(func)[0]:
                return again(func.value)
            if attr == "unsqueeze":
                inner = again(func.value)
                return Rank(inner.ndim + 1, inner.why, inner.assumed) if inner is not None else None
            return self._layer_rank(expr, _depth)
        if last in ("bmm", "baddbmm") and ns in _FUNCTION_NS:
            return Rank(3, f"`{q.rsplit('.', 1)[-1]}(...)` (line {expr.lineno})")
        if last in _ELEMENTWISE and ns in _FUNCTION_NS and expr.args:
            return again(expr.args[0])
        if last == "linear" and ns in _FUNCTION_NS and expr.args:
            return again(expr.args[0])
        return self._layer_rank(expr, _depth)

    def _layer_rank(self, call: ast.Call, depth: int) -> Optional[Rank]:
        name, ctor = self._layer(call.func)
        if name in RANK_KEEPING_LAYERS and call.args:
            return self.ndim(call.args[0], depth + 1)
        return None

    def _recurrent_output(self, call: ast.Call, depth: int) -> Optional[Rank]:
        name, ctor = self._layer(call.func)
        if name not in RECURRENT_LAYERS or not call.args:
            return None
        inner = self.ndim(call.args[0], depth + 1)
        if inner is not None:
            return Rank(inner.ndim, inner.why, inner.assumed)
        return Rank(3, f"the output of the `nn.{name}` on line {getattr(ctor, 'lineno', call.lineno)}", assumed=True)

    def _value(self, name: ast.Name) -> Optional[ast.AST]:
        """The value a name holds at its use: a plain assignment, or element 0 of ``out, h = self.lstm(x)``."""
        d = self.values.definition(name)  # type: ignore[union-attr]
        if d is None:
            return None
        stmt, index = d
        value = stmt.value  # type: ignore[attr-defined]
        if index is None:
            return value
        if isinstance(value, ast.Call) and index == 0:
            return ast.copy_location(ast.Subscript(value=value, slice=ast.Constant(0), ctx=ast.Load()), value)
        return None

    def _layer(self, func: ast.AST) -> tuple[str, Optional[ast.Call]]:
        """The ``torch.nn`` class of the layer object ``func`` names (``self.fc`` bound to ``nn.Linear(...)``)."""
        if self.values is None:
            return "", None
        ctor = self.values.module_ctor(func)
        if ctor is None:
            return "", None
        q = self.program.imports.qualify(ctor.func) or ""
        if not q.startswith(("torch.nn.", "nn.")):
            return "", ctor
        return q.rsplit(".", 1)[-1], ctor

    def layer_of(self, func: ast.AST) -> tuple[str, Optional[ast.Call]]:
        """``("Linear", <the nn.Linear(...) call>)`` for a layer object built from a ``torch.nn`` class, else ``("", ...)``."""
        return self._layer(func)

    # -- dimension 0 is the batch -----------------------------------------------------------------------------
    def batched(self, expr: Optional[ast.AST], _depth: int = 0) -> Optional[str]:
        """Why dimension 0 of ``expr`` runs over the samples of a batch (in the code's words), or None."""
        if expr is None or _depth > MAX_DEPTH or self.values is None:
            return None
        again = lambda e: self.batched(e, _depth + 1)  # noqa: E731
        if isinstance(expr, ast.Name):
            loop = self._loop_binding(expr)
            if loop is not None:
                return loop
            d = self.values.definition(expr)
            if d is not None:
                stmt, index = d
                value = stmt.value  # type: ignore[attr-defined]
                if index is not None:
                    # `x, y = batch` with `batch` drawn from a loader: each element is a batched tensor.
                    return again(value) if isinstance(value, ast.Name) and self._loop_binding(value, whole=True) else None
                return again(value)
            return self._batched_parameter(expr, _depth)
        if isinstance(expr, ast.Subscript):
            sl = expr.slice
            if isinstance(sl, ast.Constant) and sl.value is None:
                return f"`{ast.unparse(expr)}` (line {expr.lineno}) adds a batch dimension"
            if isinstance(sl, ast.Tuple) and sl.elts and isinstance(sl.elts[0], ast.Constant) and sl.elts[0].value is None:
                return f"`{ast.unparse(expr)}` (line {expr.lineno}) adds a batch dimension"
            if isinstance(expr.value, ast.Name) and isinstance(sl, ast.Constant) and isinstance(sl.value, (int, str)):
                # `batch["input_ids"]`, `batch[0]` of a whole batch drawn from a loader: one of its tensors.
                return self._loop_binding(expr.value, whole=True)
            return None
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
            for side in (expr.left, expr.right):
                found = again(side)
                if found is not None:
                    return found
            return None
        if not isinstance(expr, ast.Call):
            return None
        func = expr.func
        q = self.program.imports.qualify(func) or ""
        ns, _, last = q.rpartition(".")
        if isinstance(func, ast.Attribute) and ns not in _FUNCTION_NS:
            attr = func.attr
            if attr == "unsqueeze" and expr.args and isinstance(expr.args[0], ast.Constant) and expr.args[0].value == 0:
                return f"`{ast.unparse(expr)}` (line {expr.lineno}) adds a batch dimension"
            if attr in ("view", "reshape") and expr.args:
                first = expr.args[0]
                if isinstance(first, ast.Constant) and first.value == 1 and len(expr.args) >= 2:
                    return f"`{ast.unparse(expr)}` (line {expr.lineno}) adds a batch dimension"
                if len(expr.args) >= 2 and self._batch_size(first, func.value):
                    return again(func.value)
                return None
            if attr == "flatten" and expr.args and isinstance(expr.args[0], ast.Constant) and expr.args[0].value == 1:
                return again(func.value)
            if attr in _ELEMENTWISE and not self._layer(func)[0]:
                return again(func.value)
            if attr == "forward":
                return self._through_module(func.value, expr, _depth)
            return self._through_module(func, expr, _depth)
        if ns in _FUNCTION_NS and last == "stack" and expr.args:
            if not any(kw.arg == "dim" and not (isinstance(kw.value, ast.Constant) and kw.value.value == 0) for kw in expr.keywords) and len(expr.args) == 1:
                return f"`{ast.unparse(expr)}` (line {expr.lineno}) stacks samples into a batch"
            return None
        if ns in _FUNCTION_NS and (last in _ELEMENTWISE or last == "linear") and expr.args:
            return again(expr.args[0])
        if isinstance(func, ast.Name) or ns in _FUNCTION_NS:
            return self._through_module(func, expr, _depth) if isinstance(func, ast.Name) else None
        return None

    def _through_module(self, func: ast.AST, call: ast.Call, depth: int) -> Optional[str]:
        """A call of a layer or model object that keeps dimension 0: batched when its input is."""
        if not call.args:
            return None
        name, ctor = self._layer(func)
        if name in RECURRENT_LAYERS:
            return None  # (seq, batch, features) unless batch_first: see `ndim`
        if name in BATCH_KEEPING_LAYERS:
            return self.batched(call.args[0], depth + 1)
        if name:
            return None
        if self._is_model(func, call):
            return self.batched(call.args[0], depth + 1)
        return None

    def _is_model(self, func: ast.AST, call: ast.Call) -> bool:
        """An object of a module class of the project, or a model by kind: it maps a batch to a batch."""
        if isinstance(func, ast.Name) and (func.id in self.program.functions or func.id in self.program.classes):
            return False
        if self.values is not None:
            ref = self.values.module_of(func)
            if ref is not None:
                return not ref.name.endswith("Loss")
        key = receiver_key(func)
        return bool(key) and self.program.objects.kind(key) == K.MODEL

    def _batch_size(self, expr: ast.AST, tensor: ast.AST) -> bool:
        """``x.size(0)``, ``x.shape[0]``, ``batch_size``, ``-1`` followed by the other sizes: dimension 0 stays."""
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr == "size":
            return bool(expr.args) and isinstance(expr.args[0], ast.Constant) and expr.args[0].value == 0
        if isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Attribute) and expr.value.attr == "shape":
            return isinstance(expr.slice, ast.Constant) and expr.slice.value == 0
        if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub) and isinstance(expr.operand, ast.Constant):
            return expr.operand.value == 1
        return isinstance(expr, ast.Name) and bool(_BATCH_SIZE_NAME.match(expr.id))

    def _loop_binding(self, name: ast.Name, whole: bool = False) -> Optional[str]:
        """When ``name`` is bound by a loop over a data loader's batches (``for x, y in loader``): why it is a batch.
        ``whole``: only when the loop binds the whole batch to the name (``for batch in loader``)."""
        fn = self.program.enclosing_function(name)
        best: Optional[ast.AST] = None
        for stmt in self.values.bindings(fn).get(name.id, ()):  # type: ignore[union-attr]
            if (stmt.lineno, stmt.col_offset) < (name.lineno, name.col_offset) and (best is None or stmt.lineno > best.lineno):
                best = stmt
        if not isinstance(best, (ast.For, ast.AsyncFor)) or not any(a is best for a in self.program.index.ancestors(name)):
            return None
        target = best.target
        it = best.iter
        if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "enumerate":
            if not (isinstance(target, ast.Tuple) and len(target.elts) == 2):
                return None
            if isinstance(target.elts[0], ast.Name) and target.elts[0].id == name.id:
                return None  # the index of `enumerate`
            target = target.elts[1]
        if whole and not (isinstance(target, ast.Name) and target.id == name.id):
            return None
        if not iterates_batches(self.program, best):
            return None
        return f"`{name.id}` is a batch from the loader loop on line {best.lineno}"

    def _batched_parameter(self, name: ast.Name, depth: int) -> Optional[str]:
        """A parameter: what its callers pass (all batched), or for ``forward``'s input what the module is called with."""
        fn = self.program.enclosing_function(name)
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return None
        args = fn.args
        params = [a.arg for a in args.posonlyargs + args.args]
        if name.id not in params or not self._parameter_at(name, fn):
            return None
        cls_name = self.program.class_of(fn)
        if fn.name == "forward" and cls_name is not None and params[:1] == ["self"] and len(params) > 1 and params[1] == name.id:
            return self.module_batched(self.program.classes.get(cls_name) or _class_named(self.program, cls_name))
        sites = self.values.argument_sites(name)  # type: ignore[union-attr]
        if not sites or depth > 4:
            return None
        reasons = []
        for program, value in sites:
            other = self if program is self.program else Shapes(program)
            found = other.batched(value, depth + 1)
            if found is None:
                return None
            reasons.append(found)
        return reasons[0]

    def _parameter_at(self, name: ast.Name, fn: ast.AST) -> bool:
        """Does ``name`` still hold its parameter's value where it is read (no assignment before, outside loops)?"""
        ancestors = {id(a) for a in self.program.index.ancestors(name)}
        for stmt in self.values.bindings(fn).get(name.id, ()):  # type: ignore[union-attr]
            if id(stmt) in ancestors:
                continue
            if (stmt.lineno, stmt.col_offset) < (name.lineno, name.col_offset):
                return False
            if any(isinstance(a, (ast.For, ast.AsyncFor, ast.While)) for a in self.program.index.ancestors(stmt) if id(a) in ancestors):
                return False  # rebound later in a loop around the read: the next iteration reads the new value
        return True

    def module_batched(self, cls: Optional[ast.ClassDef], _depth: int = 0) -> Optional[str]:
        """Why the input of ``cls``'s ``forward`` is a batch: every call of its instances in this file passes one
        (at least one call, none unknown)."""
        if cls is None or id(cls) in self._visiting:
            return None
        self._visiting.add(id(cls))
        try:
            found: Optional[str] = None
            for call in self._instance_calls.get(id(cls), ()):
                if not call.args:
                    return None
                why = self.batched(call.args[0], _depth + 1)
                if why is None:
                    return None
                found = found or f"`{ast.unparse(call.func)}` is called on line {call.lineno} with a batch ({why})"
            return found
        finally:
            self._visiting.discard(id(cls))

    def instance_calls(self, cls: ast.ClassDef) -> list[ast.Call]:
        """The calls of ``cls``'s instances (or of a subclass's) in this file: ``policy(state)``, ``self.net(x)``."""
        return list(self._instance_calls.get(id(cls), ()))

    @cached_property
    def _instance_calls(self) -> dict[int, list[ast.Call]]:
        """Calls of module objects of the file's own classes: ``policy(state)``, ``self.net(x)``, ``net.forward(x)``."""
        out: dict[int, list[ast.Call]] = {}
        classes = {id(c) for c in self.program.index.of(ast.ClassDef)}
        if not classes:
            return out
        for call in self.program.index.of(ast.Call):
            func = call.func
            target = func.value if isinstance(func, ast.Attribute) and func.attr == "forward" else func
            if isinstance(target, ast.Name) and (target.id in self.program.functions or target.id in self.program.classes):
                continue
            if not isinstance(target, (ast.Name, ast.Attribute)):
                continue
            if isinstance(func, ast.Attribute) and func.attr != "forward" and not (isinstance(func.value, ast.Name) and func.value.id == "self"):
                if not isinstance(func.value, (ast.Name, ast.Attribute)):
                    continue
            owner = self.program.class_of_receiver(target, call)
            if owner is None or owner[0] is not self.program:
                continue
            for program, klass in owner[0].class_bases(owner[1]):
                if program is self.program and id(klass) in classes:
                    out.setdefault(id(klass), []).append(call)
        return out


_SCALAR_NAME = re.compile(r"scale|temp|tau|alpha|beta|factor|norm|sqrt|d_?k$|dim$|eps", re.I)


def _scalar(expr: ast.AST) -> bool:
    """A number, or a name/call that reads like one (``self.scale``, ``math.sqrt(d)``, ``temperature``)."""
    if isinstance(expr, ast.Constant):
        return isinstance(expr.value, (int, float))
    if isinstance(expr, ast.Call):
        f = expr.func
        return isinstance(f, ast.Attribute) and f.attr == "sqrt" and isinstance(f.value, ast.Name) and f.value.id in ("math", "np", "numpy")
    if isinstance(expr, ast.Name):
        return bool(_SCALAR_NAME.search(expr.id))
    if isinstance(expr, ast.Attribute):
        return bool(_SCALAR_NAME.search(expr.attr))
    return False


def _class_named(program: Program, name: str) -> Optional[ast.ClassDef]:
    return next((c for c in program.index.of(ast.ClassDef) if c.name == name), None)


def loop_batches(program: Program, loop_node: ast.AST) -> bool:
    """Does a ``for`` loop iterate the batches of a data loader? (see ``schedules.iterates_batches``)."""
    return loop_iterated(loop_node) is not None and iterates_batches(program, loop_node)


__all__ = ["BATCH_KEEPING_LAYERS", "RANK_KEEPING_LAYERS", "RECURRENT_LAYERS", "Rank", "Shapes", "loop_batches"]
