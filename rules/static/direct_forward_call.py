"""direct-forward-call: `model.forward(x)` called from outside the module, skipping its hooks."""

from __future__ import annotations

import ast
from typing import Optional

from doctor.analysis import objects as K
from doctor.analysis.names import receiver_key
from doctor.core.findings import Applicability, Severity
from doctor.lint.fixes import replace_node
from doctor.lint.rule import Rule


class DirectForwardCall(Rule):
    name = "direct-forward-call"
    code = "DR505"
    severity = Severity.WARNING
    fixable = Applicability.UNSAFE
    summary = "`model.forward(x)` is called directly from outside the module instead of `model(x)`."
    why = """
        `model(x)` runs `Module.__call__`, which runs the forward pre-hooks and hooks around `forward`. Calling
        `model.forward(x)` skips them: DistributedDataParallel does not prepare its gradient synchronisation,
        FSDP does not gather the sharded parameters, and hooks added by `torch.compile`, quantization, pruning
        or profilers are silently bypassed. Call the module instead.
    """
    known_problems = """
        The receiver must be a module as far as doctor can tell: built in the file from a torch, torchvision,
        timm or Hugging Face model class or a local `nn.Module` subclass, wrapped in DDP/FSDP/`torch.compile`,
        or, when its construction is not visible, named like a model (`model`, `net`, `encoder`...). A receiver
        named like a model that is in fact another library's object is reported unless it was built from a known
        non-torch library (`cv2`, `onnxruntime`, `tensorrt`...) in the file. Reported in scripts, plain
        functions and methods of classes that are certainly not modules (trainers, test cases); never inside
        classes that are or may be modules (their base is imported), where `self.backbone.forward(x)` is a
        module delegating to a child, a deliberate and common idiom (the outer call's hooks ran).
        `super().forward(...)`, `self.forward(...)` and `Base.forward(self, ...)` are never reported.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            logits = model.forward(x)
            loss_fn(logits, y).backward()
            optimizer.step()
    """
    good = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            logits = model(x)
            loss_fn(logits, y).backward()
            optimizer.step()
    """
    fixed = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            logits = model(x)
            loss_fn(logits, y).backward()
            optimizer.step()
    """
    fix_safety = """
        The fix replaces `model.forward(x)` with `model(x)`. It is unsafe because the call then runs the
        module's hooks: that is the point, but hooks can change results (pruning and quantization hooks, DDP's
        gradient synchronisation, a `torch.compile`d module now taking its compiled path, hooks that modify
        inputs or outputs), so outputs and timings may differ from before.
    """
    fires = (
        """
import torch
model = torch.nn.Linear(10, 2)
for x, y in loader:
    out = model.forward(x)
    loss = criterion(out, y)
""",
        """
import torch
import torch.nn as nn
class Net(nn.Module):
    def forward(self, x):
        return x
class Trainer:
    def __init__(self):
        self.model = Net()
    def step(self, x):
        return self.model.forward(x)
""",
    )
    silent = (
        """
import torch.nn as nn
class Base(nn.Module):
    def forward(self, x):
        return x * 2
class Child(Base):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 4)
    def forward(self, x):
        x = super().forward(x)
        return self.backbone.forward(x)
    def predict(self, x):
        return self.forward(x)
""",
        """
import numpy as np
import torch
class Layer:
    def forward(self, x):
        return x @ self.w
layer = Layer()
out = layer.forward(np.ones(3))
""",
        """
import cv2
import torch
net = cv2.dnn.readNetFromONNX("model.onnx")
net.setInput(blob)
out = net.forward()
""",
        """
import torch
from fairseq.models import FairseqEncoder
class GRUEncoder(FairseqEncoder):
    def __init__(self):
        super().__init__(None)
        self.rnn = torch.nn.GRU(8, 8)
    def forward_embedding(self, x):
        x, _ = self.rnn.forward(x)
        return x
""",
        """
import torch.nn as nn
class Wrapped(nn.Linear):
    def forward(self, x):
        return nn.Linear.forward(self, x) * 2
""",
    )

    def check(self, ctx):
        m = ctx.model
        for node in m.nodes(ast.Call):
            if not (isinstance(node.func, ast.Attribute) and node.func.attr == "forward"):
                continue
            recv = node.func.value
            if _exempt(m, node, recv) or not _is_module(m, recv):
                continue
            text = ctx.segment(recv)
            fix = replace_node(ctx, node.func, text, "call the module instead of its forward") if text else None
            yield self.finding(
                ctx,
                node,
                f"`{ctx.segment(node.func)}(...)` bypasses the module's hooks (DDP/FSDP, compile, hooks added by tools): "
                f"call `{text}(...)`",
                fix=fix,
            )


def _exempt(m, call: ast.Call, recv: ast.AST) -> bool:
    if isinstance(recv, ast.Call) and isinstance(recv.func, ast.Name) and recv.func.id == "super":
        return True
    if isinstance(recv, ast.Name) and recv.id in ("self", "cls"):
        return True
    if call.args and isinstance(call.args[0], ast.Name) and call.args[0].id == "self":
        return True  # `Base.forward(self, x)`: an explicit call of a parent implementation
    cls = m.class_of(_method_of(m, call))
    # Inside a class that is, or may be, an nn.Module (its base is imported), a module calling its
    # children's forward is a delegation idiom: only plain classes (trainers, tests, scripts) are reported.
    return cls is not None and not _plain_class(m, cls)


#: Bases that make a class certainly not an nn.Module.
_PLAIN_BASES = {"object", "ABC", "TestCase", "Generic", "Protocol"}
#: Libraries whose objects have a `.forward()` of their own (OpenCV DNN nets, ONNX/TensorRT sessions...).
_OTHER_LIBS = {"cv2", "numpy", "onnxruntime", "tensorrt", "openvino", "tensorflow", "tflite_runtime", "paddle", "mxnet", "jax", "sklearn"}


def _plain_class(m, name: str, _seen: frozenset = frozenset()) -> bool:
    cls = m.values.classes.get(name)
    if cls is None or name in _seen:
        return False
    for base in cls.bases:
        q = m.imports.qualify(base.value if isinstance(base, ast.Subscript) else base) or ""
        last = q.rsplit(".", 1)[-1]
        if last in _PLAIN_BASES:
            continue
        if last in m.values.classes and _plain_class(m, last, _seen | {name}):
            continue
        return False
    return True


def _method_of(m, node: ast.AST) -> ast.AST:
    fn = m.enclosing_function(node)
    while fn is not m.tree and m.class_of(fn) is None:
        fn = m.enclosing_function(fn)
    return fn


def _is_module(m, recv: ast.AST) -> bool:
    if _built_by_other_library(m, recv):
        return False
    ctor = m.values.module_ctor(recv)
    if ctor is not None:
        name = (m.imports.qualify(ctor.func) or "").rsplit(".", 1)[-1]
        return name not in m.values.classes or m.values.is_local_module_class(name)
    key: Optional[str] = receiver_key(recv)
    info = m.objects.get(key)
    if info is not None:
        return info.kind == K.MODEL and not _local_plain_class(m, info)
    return m.objects.kind(key) == K.MODEL and not _defined_as_plain_object(m, recv)


def _local_plain_class(m, info) -> bool:
    name = info.ctor_name
    return name in m.values.classes and not m.values.is_local_module_class(name)


def _defined_as_plain_object(m, recv: ast.AST) -> bool:
    """``layer = Layer()`` where ``Layer`` is a class of this file that is not an nn.Module."""
    if isinstance(recv, ast.Name):
        value = m.values.value_of(recv)
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in m.values.classes:
            return not m.values.is_local_module_class(value.func.id)
    return False


def _built_by_other_library(m, recv: ast.AST) -> bool:
    """``net = cv2.dnn.readNet(...)`` (or ``self.net = ...``): a ``.forward()`` that is not a torch module's."""
    values: list = []
    if isinstance(recv, ast.Name):
        values = [m.values.value_of(recv)]
    elif isinstance(recv, ast.Attribute) and isinstance(recv.value, ast.Name) and recv.value.id == "self":
        cls = m.class_of(_method_of(m, recv))
        values = m.values.self_attrs.get(cls or "", {}).get(recv.attr, [])
    for value in values:
        if isinstance(value, ast.Call):
            root = (m.imports.qualify(value.func) or "").split(".")[0]
            if root in _OTHER_LIBS:
                return True
    return False
