"""Datasets: which readable Dataset class a dataset expression is built from, and how many samples it holds
when that can be read off the code.

``dataset_classes(model, expr)`` follows a dataset expression (a ``DataLoader``'s first argument) back to the
classes that built it, through assignments, agreeing callers, and wrappers that keep the samples
(``Subset``, ``ConcatDataset``); classes are resolved across the project's local modules.

``dataset_length(model, expr)`` is the number of samples, when it is written in the code: a
``TensorDataset`` of tensors built with a literal first dimension, a list or ``range`` of literal length, a
``Subset`` with literal indices, a ``random_split`` with literal lengths, and the torchvision datasets whose
split sizes are fixed (MNIST, CIFAR, SVHN...). Anything else is None (unknown).
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Optional

from doctor.analysis.layers import built_by
from doctor.analysis.values import literal_number

if TYPE_CHECKING:
    from doctor.analysis.program import Program

MAX_DEPTH = 6

#: Wrappers whose samples are those of (a subset of) their first argument.
_SAMPLE_WRAPPERS = {"Subset", "ConcatDataset", "ChainDataset"}
#: torchvision datasets with fixed split sizes: {class: {split: samples}} (``train=True`` is "train").
_TORCHVISION_SIZES = {
    "MNIST": {"train": 60000, "test": 10000},
    "FashionMNIST": {"train": 60000, "test": 10000},
    "KMNIST": {"train": 60000, "test": 10000},
    "CIFAR10": {"train": 50000, "test": 10000},
    "CIFAR100": {"train": 50000, "test": 10000},
    "SVHN": {"train": 73257, "test": 26032, "extra": 531131},
    "STL10": {"train": 5000, "test": 8000},
}
#: Tensor factories whose first argument (or first element of a size tuple) is the number of rows.
_FACTORIES = {"randn", "rand", "zeros", "ones", "empty", "randint", "normal", "full"}


def dataset_classes(model: "Program", expr: Optional[ast.AST], _depth: int = 0) -> Optional[list[tuple["Program", ast.ClassDef]]]:
    """The readable classes whose instances ``expr`` holds (several for a ``ConcatDataset``); None when any part
    is built by something we cannot read."""
    if expr is None or _depth > MAX_DEPTH:
        return None
    built = built_by(model, expr)
    if built is None:
        return None
    program, call = built.program, built.call
    name = (program.imports.qualify(call.func) or "").rsplit(".", 1)[-1]
    if name in _SAMPLE_WRAPPERS and call.args:
        inner = call.args[0]
        parts = inner.elts if isinstance(inner, (ast.List, ast.Tuple)) and name != "Subset" else [inner]
        out: list[tuple[Program, ast.ClassDef]] = []
        for part in parts:
            found = dataset_classes(program, part, _depth + 1)
            if found is None:
                return None
            out.extend(found)
        return out
    cls = program.resolve_class(call.func)
    if cls is None:
        return None
    return [cls]


def loaders_reaching(model: "Program", expr: Optional[ast.AST], _depth: int = 0) -> Optional[list]:
    """The ``DataLoader(...)`` calls whose loader reaches ``expr`` where it is read: a local name through the
    definition that reaches it (not a same-named variable of another function), a parameter through every
    visible caller, and anything else through ``DataFlow.loaders``. None when any source is unknown."""
    if expr is None or _depth > MAX_DEPTH:
        return None
    values = getattr(model, "values", None)
    data = getattr(model, "data", None)
    if values is None or data is None:
        return None
    if isinstance(expr, ast.Call) and data.is_loader_ctor(expr):
        return data.loaders(expr, model.enclosing_function(expr))
    if isinstance(expr, ast.Name):
        d = values.definition(expr)
        if d is not None and d[1] is None:
            return loaders_reaching(model, getattr(d[0], "value", None), _depth + 1)
        fn = model.enclosing_function(expr)
        if d is None and fn is not model.tree and expr.id in {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs} and not model.rebinds(fn, expr.id):
            out: list = []
            sites = values.argument_sites(expr)
            if not sites:
                return None
            for program, arg in sites:
                found = loaders_reaching(program, arg, _depth + 1)
                if found is None:
                    return None
                out.extend(found)
            return out
    return data.loaders(expr, model.enclosing_function(expr))


def dataset_length(model: "Program", expr: Optional[ast.AST], _depth: int = 0) -> Optional[int]:
    """The number of samples ``expr`` holds, when the code states it; else None."""
    if expr is None or _depth > MAX_DEPTH:
        return None
    values = getattr(model, "values", None)
    if values is None:
        return None
    if isinstance(expr, ast.Name):
        d = values.definition(expr)
        if d is None:
            return _from_callers(model, expr, dataset_length, _depth)
        stmt, index = d
        value = getattr(stmt, "value", None)
        if index is None:
            return dataset_length(model, value, _depth + 1)
        return _split_length(model, value, index)
    if isinstance(expr, (ast.List, ast.Tuple)):
        return None if any(isinstance(e, ast.Starred) for e in expr.elts) else len(expr.elts)
    if isinstance(expr, ast.ListComp):
        return _comprehension_length(model, expr)
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mult):
        # `[(x, y)] * 256`: a repeated list
        for seq, times in ((expr.left, expr.right), (expr.right, expr.left)):
            if isinstance(seq, (ast.List, ast.Tuple)):
                n, k = dataset_length(model, seq, _depth + 1), _int(model, times)
                return n * k if n is not None and k is not None else None
        return None
    if not isinstance(expr, ast.Call):
        return None
    q = model.imports.qualify(expr.func) or ""
    name = q.rsplit(".", 1)[-1]
    if name == "range" and len(expr.args) == 1:
        return _int(model, expr.args[0])
    if name == "list" and len(expr.args) == 1:
        return dataset_length(model, expr.args[0], _depth + 1)
    if name == "TensorDataset" and expr.args and not isinstance(expr.args[0], ast.Starred):
        return tensor_rows(model, expr.args[0], _depth + 1)
    if name == "Subset" and len(expr.args) >= 2:
        return dataset_length(model, expr.args[1], _depth + 1)
    if q.startswith("torchvision.datasets") and name in _TORCHVISION_SIZES:
        return _torchvision_size(model, expr, name)
    return None


def tensor_rows(model: "Program", expr: Optional[ast.AST], _depth: int = 0) -> Optional[int]:
    """The first dimension of a tensor or array built with a literal size (``torch.randn(512, 20)``,
    ``np.zeros((100, 3))``, ``torch.tensor([[...], ...])``)."""
    if expr is None or _depth > MAX_DEPTH:
        return None
    values = getattr(model, "values", None)
    if isinstance(expr, ast.Name) and values is not None:
        value = values.value_of(expr)
        if value is None:
            return _from_callers(model, expr, tensor_rows, _depth)
        return tensor_rows(model, value, _depth + 1)
    if not isinstance(expr, ast.Call):
        return None
    func = expr.func
    if isinstance(func, ast.Attribute) and func.attr in ("float", "long", "to", "cuda", "double", "int", "clone", "contiguous"):
        return tensor_rows(model, func.value, _depth + 1)
    q = model.imports.qualify(func) or ""
    parts = q.split(".")
    name = parts[-1]
    if parts[0] not in ("torch", "numpy", "np"):
        return None
    if name in ("tensor", "as_tensor", "array", "asarray", "FloatTensor", "LongTensor") and expr.args:
        inner = expr.args[0]
        if isinstance(inner, (ast.List, ast.Tuple)) and not any(isinstance(e, ast.Starred) for e in inner.elts):
            return len(inner.elts)
        return tensor_rows(model, inner, _depth + 1)
    if name in ("from_numpy",) and expr.args:
        return tensor_rows(model, expr.args[0], _depth + 1)
    if name in _FACTORIES:
        size = None
        if name == "randint":
            size = expr.args[2] if len(expr.args) > 2 else next((k.value for k in expr.keywords if k.arg == "size"), None)
            if size is None and len(expr.args) == 2 and isinstance(expr.args[1], (ast.Tuple, ast.List)):
                size = expr.args[1]
        elif name in ("normal", "full"):
            size = next((k.value for k in expr.keywords if k.arg == "size"), None)
            if size is None and name == "full" and expr.args:
                size = expr.args[0]
        elif expr.args:
            size = expr.args[0]
        else:
            size = next((k.value for k in expr.keywords if k.arg in ("size", "shape")), None)
        if isinstance(size, (ast.Tuple, ast.List)):
            size = size.elts[0] if size.elts else None
        return _int(model, size)
    return None


def _from_callers(model: "Program", name: ast.Name, measure, depth: int) -> Optional[int]:
    """A parameter that its function never rebinds: the size every visible caller's argument agrees on."""
    values = getattr(model, "values", None)
    sites = values.argument_sites(name) if values is not None else []
    found = {measure(program, arg, depth + 1) for program, arg in sites}
    if len(found) != 1:
        return None
    return found.pop()


def _split_length(model: "Program", value: Optional[ast.AST], index: int) -> Optional[int]:
    """``train, val = random_split(ds, [900, 100])``: the literal length of element ``index``."""
    if not isinstance(value, ast.Call):
        return None
    name = (model.imports.qualify(value.func) or "").rsplit(".", 1)[-1]
    if name != "random_split":
        return None
    lengths = value.args[1] if len(value.args) > 1 else next((k.value for k in value.keywords if k.arg == "lengths"), None)
    if not isinstance(lengths, (ast.List, ast.Tuple)) or index >= len(lengths.elts):
        return None
    number = _int(model, lengths.elts[index])
    return number


def _comprehension_length(model: "Program", comp: ast.ListComp) -> Optional[int]:
    """``[... for _ in range(16)]``: one unconditional generator over a literal range."""
    if len(comp.generators) != 1:
        return None
    gen = comp.generators[0]
    if gen.ifs or gen.is_async:
        return None
    it = gen.iter
    if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range" and len(it.args) == 1:
        return _int(model, it.args[0])
    return None


def _torchvision_size(model: "Program", call: ast.Call, name: str) -> Optional[int]:
    sizes = _TORCHVISION_SIZES[name]
    split: Optional[str] = None
    for kw in call.keywords:
        if kw.arg == "train" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, bool):
            split = "train" if kw.value.value else "test"
        elif kw.arg == "split" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
            split = kw.value.value
        elif kw.arg in ("train", "split") or kw.arg is None:
            return None  # a variable split: unknown
    if split is None:
        if name in ("SVHN", "STL10"):
            if len(call.args) > 1:
                a = call.args[1]
                split = a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None
                if split is None:
                    return None
            else:
                split = "train"
        else:
            if len(call.args) > 1:
                a = call.args[1]
                if not (isinstance(a, ast.Constant) and isinstance(a.value, bool)):
                    return None
                split = "train" if a.value else "test"
            else:
                split = "train"
    return sizes.get(split)


def _int(model: "Program", node: Optional[ast.AST]) -> Optional[int]:
    value = literal_number(model, node)
    if value is None or value != int(value) or value < 0:
        return None
    return int(value)


__all__ = ["dataset_classes", "dataset_length", "loaders_reaching", "tensor_rows"]
