"""non-leaf-parameter: a tensor created with requires_grad=True and then moved, so the optimizer gets a copy."""

from __future__ import annotations

import ast
from typing import Optional

from doctor.analysis import objects as K
from doctor.analysis.names import receiver_key
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

_MOVES = {"to", "cuda", "double", "half", "bfloat16"}
_DTYPES = {
    "float", "float32", "float16", "float64", "double", "half", "bfloat16", "int", "int64", "long", "int32",
    "bool", "uint8", "int8", "int16", "complex64", "complex128",
}
_LEAF_WRAPPERS = {"Parameter", "UninitializedParameter"}


class NonLeafParameter(Rule):
    name = "non-leaf-parameter"
    code = "DR504"
    severity = Severity.ERROR
    summary = "A tensor made with requires_grad=True is then moved (.to/.cuda): what gets trained is a non-leaf copy with no .grad."
    why = """
        `torch.randn(n, requires_grad=True).to(device)` creates a leaf on the CPU and returns a *copy* on the
        device. The copy is a non-leaf: `backward()` never fills its `.grad`, and the real leaf is thrown away.
        A torch optimizer refuses it when the run starts ("can't optimize a non-leaf Tensor"); a hand-written
        update reads `.grad` as None (PyTorch only warns) and either crashes or, behind an `if p.grad is not None`
        guard, silently never trains it. The script works on a CPU-only machine (where `.to("cpu")` returns
        the leaf itself) and breaks on the GPU. Create the tensor on the device
        (`torch.randn(n, device=device, requires_grad=True)`), set the flag after the move
        (`.to(device).requires_grad_()`), or wrap it: `nn.Parameter(t.to(device))`. Reported when the moved
        tensor is given to an optimizer or its `.grad` is read.
    """
    known_problems = """
        Reported for an assignment whose value is a tensor created with a literal `requires_grad=True` (or
        `.requires_grad_()`) and then moved with `.to(...)`, `.cuda()`, `.double()`, `.half()` or `.bfloat16()`,
        in one expression or through a name, when the assigned name is given to an optimizer or has its `.grad`
        read in the file. Not reported: `.to("cpu")`, `.to(torch.float32)` and other dtype conversions through
        `.to`, a `.to(device)` of a tensor made from one already on that device (a no-op that returns the leaf),
        tensors wrapped in `nn.Parameter`, and tensors that are never optimised or read for `.grad` here (they
        may be used by code in another file). A move to a device variable that is `"cpu"` at run time is
        reported too: the script then works on the CPU but not on a GPU.
    """
    bad = """
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        w = torch.randn(20, 1, requires_grad=True).to(device)
        optimizer = torch.optim.SGD([w], lr=0.1)
        x, y = torch.randn(64, 20, device=device), torch.randn(64, 1, device=device)

        for step in range(100):
            optimizer.zero_grad()
            loss = ((x @ w - y) ** 2).mean()
            loss.backward()
            optimizer.step()
    """
    good = """
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        w = torch.randn(20, 1, device=device, requires_grad=True)
        optimizer = torch.optim.SGD([w], lr=0.1)
        x, y = torch.randn(64, 20, device=device), torch.randn(64, 1, device=device)

        for step in range(100):
            optimizer.zero_grad()
            loss = ((x @ w - y) ** 2).mean()
            loss.backward()
            optimizer.step()
    """
    fires = (
        """
import torch
device = torch.device("cuda")
w = torch.randn(10, 1, requires_grad=True).to(device)
b = torch.zeros(1, requires_grad=True).to(device)
optimizer = torch.optim.SGD([w, b], lr=0.1)
""",
        """
import torch
from torch.autograd import Variable
W = Variable(torch.randn(784, 10), requires_grad=True).cuda()
for x, y in loader:
    loss = ((x @ W - y) ** 2).mean()
    loss.backward()
    W.data -= 0.01 * W.grad.data
""",
        """
import torch
class Model:
    def __init__(self, device):
        self.scale = torch.ones(1).requires_grad_().cuda()
        self.opt = torch.optim.Adam([self.scale], lr=1e-3)
""",
    )
    silent = (
        """
import torch
import torch.nn as nn
w = nn.Parameter(torch.randn(10, 1).to(device))
b = torch.zeros(1, device=device, requires_grad=True)
c = torch.zeros(1).to(device).requires_grad_()
optimizer = torch.optim.SGD([w, b, c], lr=0.1)
""",
        """
import torch
x = torch.randn(8, 3, requires_grad=True).to(device)
out = model(x)
saliency, = torch.autograd.grad(out.sum(), x)
""",
        """
import torch
w = torch.randn(10, 1, requires_grad=True).to("cpu")
optimizer = torch.optim.SGD([w], lr=0.1)
""",
    )

    def check(self, ctx):
        m = ctx.model
        used = _optimized_keys(m) | _grad_read_keys(m)
        for node in m.nodes(ast.Assign):
            if len(node.targets) != 1:
                continue
            key = receiver_key(node.targets[0])
            if key is None or key not in used:
                continue
            move = _moved_leaf(m, node.value)
            if move is None:
                continue
            yield self.finding(
                ctx,
                move,
                f"`{key}` is created with requires_grad=True and then moved (`.{move.func.attr}(...)`): it holds a non-leaf "  # type: ignore[attr-defined]
                "copy whose .grad stays None (optimizers reject it); create it on the device or call .requires_grad_() after the move",
            )


def _moved_leaf(m, expr: ast.AST) -> Optional[ast.Call]:
    """The move call when ``expr`` is ``<leaf with requires_grad>.to(device)`` (possibly through a name)."""
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr in _MOVES):
        return None
    if expr.func.attr == "to" and not _moves_device(m, expr):
        return None
    recv = expr.func.value
    if isinstance(recv, ast.Name):
        value = m.values.value_of(recv)
        recv = value if value is not None else recv
    if not _requires_grad_leaf(m, recv):
        return None
    if expr.func.attr == "to" and _already_on(m, recv, expr):
        return None  # `content.clone().requires_grad_().to(device)` with `content` already on `device`: a no-op
    return expr


_SAME_TENSOR = {"clone", "detach", "requires_grad_", "contiguous", "float"}


def _already_on(m, leaf: ast.AST, move: ast.Call) -> bool:
    """The tensor the leaf was made from already lives on the device ``move`` targets, so the move returns the
    leaf itself: ``x = img.to(device)`` ... ``x.clone().requires_grad_(True).to(device)``."""
    target = ast.unparse(move.args[0]) if move.args else next((ast.unparse(k.value) for k in move.keywords if k.arg == "device"), None)
    if target is None:
        return False
    src = leaf
    for _ in range(8):
        if isinstance(src, ast.Call) and isinstance(src.func, ast.Attribute) and src.func.attr in _SAME_TENSOR:
            src = src.func.value
            continue
        if isinstance(src, ast.Name):
            value = m.values.value_of(src)
            if value is None:
                return False
            src = value
            continue
        break
    if isinstance(src, ast.Call):
        if isinstance(src.func, ast.Attribute) and src.func.attr == "to" and src.args:
            return ast.unparse(src.args[0]) == target
        return any(k.arg == "device" and ast.unparse(k.value) == target for k in src.keywords)
    return False


def _moves_device(m, call: ast.Call) -> bool:
    for a in call.args[:1]:
        if isinstance(a, ast.Constant) and a.value == "cpu":
            return False
        q = m.imports.qualify(a) or ""
        if q.startswith("torch.") and q.rsplit(".", 1)[-1] in _DTYPES:
            return False  # a dtype conversion, possibly a no-op
    return bool(call.args) or any(kw.arg == "device" for kw in call.keywords)


def _requires_grad_leaf(m, expr: ast.AST) -> bool:
    if not isinstance(expr, ast.Call):
        return False
    if isinstance(expr.func, ast.Attribute) and expr.func.attr == "requires_grad_":
        return not (expr.args and isinstance(expr.args[0], ast.Constant) and expr.args[0].value is False)
    name = (m.imports.qualify(expr.func) or "").rsplit(".", 1)[-1]
    if name in _LEAF_WRAPPERS:
        return False
    return any(kw.arg == "requires_grad" and isinstance(kw.value, ast.Constant) and kw.value.value is True for kw in expr.keywords)


def _optimized_keys(m) -> set[str]:
    """Keys of tensors listed in an optimizer's parameters."""
    out: set[str] = set()
    for call in m.nodes(ast.Call):
        q = m.imports.qualify(call.func) or ""
        if not q or K.classify_ctor(q, m.values.class_kinds) != K.OPTIMIZER:
            continue
        params = call.args[0] if call.args else next((kw.value for kw in call.keywords if kw.arg == "params"), None)
        if params is None:
            continue
        for n in ast.walk(params):
            key = receiver_key(n) if isinstance(n, (ast.Name, ast.Attribute)) else None
            if key:
                out.add(key)
    return out


def _grad_read_keys(m) -> set[str]:
    out: set[str] = set()
    for node in m.nodes(ast.Attribute):
        if node.attr == "grad" and isinstance(node.ctx, ast.Load):
            key = receiver_key(node.value)
            if key:
                out.add(key)
    return out
