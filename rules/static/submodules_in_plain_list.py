"""submodules-in-plain-list: layers kept in a plain list or dict attribute of an nn.Module are never registered."""

from __future__ import annotations

import ast
from typing import Optional

from doctor.analysis import objects as K
from doctor.analysis.modules import PLAIN, Attribute, ModuleTables
from doctor.core.findings import Applicability, Edit, Fix, Severity
from doctor.lint.rule import Rule

#: Calls in a class that register modules by other means: the rule cannot tell what they cover.
_REGISTERS = {"add_module", "register_module", "setattr", "register_parameter"}
_CONTAINERS = {"ModuleList", "ModuleDict", "Sequential", "ParameterList", "ParameterDict"}


class SubmodulesInPlainList(Rule):
    name = "submodules-in-plain-list"
    code = "DR507"
    severity = Severity.ERROR
    fixable = Applicability.UNSAFE
    summary = "Layers are kept in a plain list/dict attribute of an nn.Module, so their parameters are never registered."
    why = """
        `nn.Module` registers a sub-module only when it is assigned to an attribute directly or held by
        `nn.ModuleList`, `nn.ModuleDict` or `nn.Sequential`. Layers in a plain Python `list`, `dict` or `tuple`
        still run in `forward`, so nothing errors, but `model.parameters()` does not contain their weights: the
        optimizer never updates them (they stay at their random initialisation), `model.to(device)` and
        `model.half()` leave them behind (a device mismatch at best), `state_dict()` does not save them, and
        `model.eval()` does not switch their dropout or batch norm to evaluation.
    """
    known_problems = """
        Reported for a class that subclasses `nn.Module` (directly or through classes of the project) and assigns a
        list, tuple or dict literal or comprehension of layers to `self.X` (or an empty one it then fills with
        `self.X.append(...)`/`self.X[k] = ...`, or a local list filled in a loop and then assigned), where a layer
        is a `torch.nn` class with parameters or buffers or a module class of the project that may have
        some. Lists of parameterless layers (activations, pooling, dropout), of losses, and of modules handed in
        from outside (the `self.teacher = [teacher]` idiom that hides a frozen model from `parameters()`) stay
        silent, and so does a class that also wraps the list in a container (`nn.ModuleList(self.X)`,
        `nn.Sequential(*self.X)`), registers modules itself (`add_module`, `register_module`, `setattr`) or
        overrides `parameters()`. Layers that a method adds to a list built elsewhere are not followed.
    """
    bad = """
        import torch
        from torch import nn


        class MLP(nn.Module):
            def __init__(self, sizes):
                super().__init__()
                self.layers = [nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]

            def forward(self, x):
                for layer in self.layers[:-1]:
                    x = torch.relu(layer(x))
                return self.layers[-1](x)


        model = MLP([20, 64, 64, 2])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(32, 20), torch.randint(0, 2, (32,))
        for step in range(100):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    """
    good = """
        import torch
        from torch import nn


        class MLP(nn.Module):
            def __init__(self, sizes):
                super().__init__()
                self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])])

            def forward(self, x):
                for layer in self.layers[:-1]:
                    x = torch.relu(layer(x))
                return self.layers[-1](x)


        model = MLP([20, 64, 64, 2])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(32, 20), torch.randint(0, 2, (32,))
        for step in range(100):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    """
    fixed = good
    fix_safety = """
        The fix wraps the list in `nn.ModuleList(...)` (an empty list that is filled with `append` becomes
        `nn.ModuleList()`); dicts and tuples are not rewritten. `nn.ModuleList` supports indexing, slicing,
        iteration, `len`, `append`, `extend` and `insert`, so `forward` keeps working. It is unsafe because it
        changes the model: the layers' parameters now appear in `parameters()` (they start training, which is the
        point), and `state_dict()` gains their keys, so checkpoints saved before the fix no longer load with
        `strict=True`.
    """
    fires = (
        """
import torch.nn as nn
class Encoder(nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.blocks = []
        for _ in range(depth):
            self.blocks.append(nn.TransformerEncoderLayer(256, 8))
    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x
""",
        """
import torch.nn as nn
class MultiTask(nn.Module):
    def __init__(self, tasks):
        super().__init__()
        self.backbone = nn.Linear(128, 64)
        self.heads = {t: nn.Linear(64, n) for t, n in tasks.items()}
    def forward(self, x):
        h = self.backbone(x)
        return {t: head(h) for t, head in self.heads.items()}
""",
        """
import torch.nn as nn
class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)
    def forward(self, x):
        return self.fc(x)
class Net(nn.Module):
    def __init__(self, d, n):
        super().__init__()
        layers = []
        for _ in range(n):
            layers.append(Block(d))
        self.layers = layers
    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
""",
    )
    silent = (
        """
import torch.nn as nn
class Net(nn.Module):
    def __init__(self, n):
        super().__init__()
        layers = [nn.Linear(64, 64) for _ in range(n)]
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({"a": nn.Linear(64, 2)})
""",
        # Parameterless layers and losses in a list.
        """
import torch.nn as nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.acts = [nn.ReLU(), nn.GELU(), nn.Identity()]
        self.losses = [nn.MSELoss(), nn.L1Loss()]
""",
        # A frozen teacher hidden from parameters() on purpose.
        """
import torch.nn as nn
class Distiller(nn.Module):
    def __init__(self, student, teacher):
        super().__init__()
        self.student = student
        self._teacher = [teacher]
""",
        # The list is registered afterwards.
        """
import torch.nn as nn
class Net(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.blocks = [nn.Conv2d(16, 16, 3) for _ in range(n)]
        for i, b in enumerate(self.blocks):
            self.add_module(f"block{i}", b)
""",
        # A plain class (not an nn.Module) holding models: nothing to register into.
        """
import torch.nn as nn
class Ensemble:
    def __init__(self, n):
        self.members = [nn.Linear(4, 2) for _ in range(n)]
""",
    )

    def check(self, ctx):
        m = ctx.model
        classes = m.index.of(ast.ClassDef)
        if not classes or "self." not in ctx.source.text:
            return
        tables = ModuleTables(m)
        for cls in classes:
            if not _holds_containers(m, cls) or m.class_kind(cls) != K.MODEL or _registers_itself(m, cls):
                continue
            attrs = tables.submodules(cls)
            for attr in attrs.values():
                if attr.holds != PLAIN or not m.owns(attr.node) or not _in_class(m, attr.node, cls):
                    continue
                if _wrapped_later(m, cls, attr.name):
                    continue
                kind, where = _container(m, attr)
                what = f"`{attr.what}`" if attr.what else "module"
                yield self.finding(
                    ctx,
                    where,
                    f"`self.{attr.name}` keeps {what} layers in a plain {kind}: `{cls.name}` does not register them, so "
                    "their parameters are missing from `parameters()` (the optimizer never trains them), `.to(device)`, "
                    f"`state_dict()` and `train()/eval()`; use `nn.Module{'Dict' if kind == 'dict' else 'List'}`",
                    fix=_fix(ctx, m, attr, where, kind),
                )


_CONTAINER_VALUES = (ast.List, ast.ListComp, ast.Tuple, ast.Dict, ast.DictComp, ast.Name)


def _holds_containers(m, cls: ast.ClassDef) -> bool:
    """A cheap first look: does a method assign a list/dict/tuple (or a local name) to a ``self`` attribute?"""
    for node in m.index.within(cls, ast.Assign):
        value = node.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in ("list", "dict"):
            return True
        if not isinstance(value, _CONTAINER_VALUES) or not any(
            isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self" for t in node.targets
        ):
            continue
        if not isinstance(value, ast.Name):
            return True
        # `self.layers = layers`: only when `layers` is a list or dict built in that method.
        fn = m.enclosing_function(node)
        if any(isinstance(b, ast.Assign) and isinstance(b.value, _CONTAINER_VALUES[:-1]) for b in m.values.bindings(fn).get(value.id, ())):
            return True
    return False


def _in_class(m, node: ast.AST, cls: ast.ClassDef) -> bool:
    for anc in m.index.ancestors(node):
        if isinstance(anc, ast.ClassDef):
            return anc is cls
    return False


def _registers_itself(m, cls: ast.ClassDef) -> bool:
    """``add_module``/``register_module``/``setattr`` in the class, or its own ``parameters()``."""
    if any(isinstance(i, (ast.FunctionDef, ast.AsyncFunctionDef)) and i.name in ("parameters", "named_parameters", "_apply") for i in cls.body):
        return True
    for call in m.index.within(cls, ast.Call):
        f = call.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name in _REGISTERS:
            return True
    return False


def _wrapped_later(m, cls: ast.ClassDef, name: str) -> bool:
    """``nn.ModuleList(self.X)``, ``nn.Sequential(*self.X)``, ``nn.ModuleDict(self.X)`` anywhere in the class."""
    for call in m.index.within(cls, ast.Call):
        last = (m.imports.qualify(call.func) or "").rsplit(".", 1)[-1]
        if last not in _CONTAINERS:
            continue
        for a in list(call.args) + [kw.value for kw in call.keywords]:
            inner = a.value if isinstance(a, ast.Starred) else a
            for n in ast.walk(inner):
                if isinstance(n, ast.Attribute) and n.attr == name and isinstance(n.value, ast.Name) and n.value.id == "self":
                    return True
    return False


def _container(m, attr: Attribute) -> tuple[str, ast.AST]:
    """``(list|dict|tuple, node to report)``: the assignment that creates the container."""
    node = attr.node
    first = attr.nodes[0] if attr.nodes else node
    if isinstance(node, ast.Call):  # `self.X.append(...)`: report where the empty list is created
        return "list", first
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Subscript) for t in node.targets):
        return "dict", first
    value = getattr(node, "value", None)
    if isinstance(value, (ast.Dict, ast.DictComp)):
        return "dict", node
    if isinstance(value, ast.Tuple):
        return "tuple", node
    return "list", node


def _nn_name(m) -> Optional[str]:
    """How this file spells ``torch.nn.ModuleList``."""
    for local, qualified in m.imports.aliases.items():
        if qualified == "torch.nn.ModuleList":
            return local
    for local, qualified in m.imports.aliases.items():
        if qualified == "torch.nn":
            return f"{local}.ModuleList"
    if m.imports.aliases.get("torch") == "torch":
        return "torch.nn.ModuleList"
    return None


def _fix(ctx, m, attr: Attribute, where: ast.AST, kind: str) -> Optional[Fix]:
    if kind != "list":
        return None
    name = _nn_name(m)
    value = getattr(where, "value", None)
    if name is None or value is None or not isinstance(where, ast.Assign):
        return None
    if isinstance(value, ast.List) and not value.elts:
        start = ctx.char_column(value.lineno, value.col_offset)
        end = ctx.char_column(value.end_lineno, value.end_col_offset)
        edit = Edit(value.lineno, start, value.end_lineno, end, f"{name}()")
        return Fix(f"make `self.{attr.name}` an `nn.ModuleList`", Applicability.UNSAFE, (edit,))
    if not isinstance(value, (ast.List, ast.ListComp, ast.Name)):
        return None
    start = ctx.char_column(value.lineno, value.col_offset)
    end = ctx.char_column(value.end_lineno, value.end_col_offset)
    edits = (Edit(value.end_lineno, end, value.end_lineno, end, ")"), Edit(value.lineno, start, value.lineno, start, f"{name}("))
    return Fix(f"wrap `self.{attr.name}` in `nn.ModuleList`", Applicability.UNSAFE, edits)
