"""backward-in-no-grad: a loss computed and backpropagated inside a no_grad / inference_mode region."""

from __future__ import annotations

import ast
from typing import Optional

from doctor.analysis.events import BACKWARD
from doctor.analysis.modes import decorated_no_grad, disables_grad
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

_OFF = {"no_grad", "inference_mode"}
_MODES = _OFF | {"enable_grad"}


class BackwardInNoGrad(Rule):
    name = "backward-in-no-grad"
    code = "DR502"
    severity = Severity.ERROR
    summary = "backward() runs inside a no_grad / inference_mode block where its loss was computed too."
    why = """
        Under `torch.no_grad()` (or `inference_mode()`, `set_grad_enabled(False)`, an `@torch.no_grad()`
        decorator) autograd records nothing, so a loss computed there has no graph. `backward()` on it raises
        "element 0 of tensors does not require grad", and the common workaround (`loss.requires_grad = True`)
        makes it run while computing no parameter gradient at all: the optimizer then steps on stale or zero
        gradients. This often happens when a training step is called from inside an evaluation block or a
        helper decorated with `@torch.no_grad()`.
    """
    known_problems = """
        Reported when the backward runs inside a `with torch.no_grad()`/`inference_mode()`/
        `set_grad_enabled(False)` block, or in a function decorated with one of them (or a project wrapper named
        like `no_grad`/`inference_mode`), with `enable_grad` not re-enabling it, and the value backpropagated
        was computed inside that same region (a call, or a name assigned there). A loss computed before the
        region and backpropagated inside it still has its graph and is not reported. Grad disabled by a plain
        statement (`torch.set_grad_enabled(False)` on its own line) is not seen. A backward in a function called
        inside the region is reported when that function is in the same file; one in a function of a local
        module is not (its loss is not traced across the file boundary), nor is a region set up by a caller in
        another file.
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
            with torch.no_grad():
                loss = loss_fn(model(x), y)
                loss.requires_grad = True
                loss.backward()
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
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
    """
    fires = (
        """
import torch
for x, y in loader:
    with torch.no_grad():
        loss = criterion(model(x), y)
        loss.requires_grad = True
        loss.backward()
    optimizer.step()
""",
        """
import torch
def train_step(model, batch, optimizer):
    optimizer.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
for batch in loader:
    with torch.inference_mode():
        train_step(model, batch, optimizer)
""",
        """
import torch
@torch.no_grad()
def update(model, x, y, optimizer):
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
""",
    )
    silent = (
        """
import torch
for x, y in loader:
    loss = criterion(model(x), y)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean()
    loss.backward()
""",
        """
import torch
with torch.no_grad():
    for x, y in loader:
        with torch.enable_grad():
            loss = criterion(model(x), y)
            loss.backward()
""",
        """
import torch
for x, y in loader:
    loss = criterion(model(x), y)
    with torch.no_grad():
        loss.backward()
""",
    )

    def check(self, ctx):
        m = ctx.model
        for stream in m.streams:
            decorated = decorated_no_grad(stream.owner, m)
            for ev in stream.events:
                if ev.kind != BACKWARD:
                    continue
                modes = [c for c in ev.contexts if c in _MODES]
                off = modes[-1] in _OFF if modes else decorated
                if not off:
                    continue
                region = _region(m, ev, stream.owner)
                if region is None or not _loss_made_in(m, ev, region):
                    continue
                where = f"line {region.lineno}" if region is not stream.owner else f"the `@no_grad` function `{stream.owner.name}`"
                yield self.finding(
                    ctx,
                    ev.via[0] if ev.via else ev.node,
                    f"`{ctx.segment(ev.node)}` runs with gradients disabled ({where}), where its loss was computed too: "
                    "no graph was recorded, so it fails or leaves every parameter gradient empty",
                )


def _region(m, ev, owner: ast.AST) -> Optional[ast.AST]:
    """The innermost grad-disabling ``with`` around the backward (or around the call it was inlined
    through), or the decorated function itself."""
    start = ev.via[0] if ev.via else ev.node
    cur = m.parents.get(id(start))
    while cur is not None and cur is not owner:
        if isinstance(cur, (ast.With, ast.AsyncWith)):
            if any(disables_grad(item.context_expr, m) for item in cur.items):
                return cur
        cur = m.parents.get(id(cur))
    return owner if decorated_no_grad(owner, m) else None


def _loss_made_in(m, ev, region: ast.AST) -> bool:
    """Was the backpropagated value computed inside ``region`` (so it has no graph)?"""
    arg = ev.arg
    if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr == "scale" and arg.args:
        arg = arg.args[0]
    if arg is None:
        return False
    if isinstance(arg, ast.Call):
        return True
    if isinstance(arg, ast.Name):
        d = m.values.definition(arg)
        if d is None:
            return False
        return bool(ev.via) or m.values.contains(region, d[0])
    if isinstance(arg, ast.Attribute) and arg.attr == "loss":
        return _loss_made_in_value(m, arg.value, ev, region)
    return False


def _loss_made_in_value(m, value: ast.AST, ev, region: ast.AST) -> bool:
    if isinstance(value, ast.Call):
        return True
    if isinstance(value, ast.Name):
        d = m.values.definition(value)
        return d is not None and (bool(ev.via) or m.values.contains(region, d[0]))
    return False
