"""double-optimizer-step: the same optimizer steps twice in one iteration."""

from __future__ import annotations

import ast

from doctor.analysis.events import BACKWARD, STEP
from doctor.analysis.modes import report_node
from doctor.core.findings import Severity
from doctor.lint.rule import Rule


class DoubleOptimizerStep(Rule):
    name = "double-optimizer-step"
    code = "DR104"
    severity = Severity.ERROR
    summary = "The same optimizer steps twice in one iteration (e.g. `scaler.step(opt)` and then `opt.step()`)."
    why = """
        Each `step()` applies the current gradients. Two steps on the same gradients double the effective
        learning rate and advance Adam's moment estimates and step counter twice per batch. The usual cause
        is an AMP branch that calls `scaler.step(optimizer)` while an `optimizer.step()` below it still runs
        on every path. Nothing fails: training is just less stable and the tuned learning rate is wrong.
    """
    known_problems = """
        Stays silent when a `backward()` runs between the two steps (two deliberate updates on new gradients),
        when the steps sit in exclusive branches (`if`/`else`, opposite tests such as `if amp:` and `if not
        amp:`, the two arms of a conditional expression), in an `except` handler (a fallback), or under
        unrelated conditions that may never hold in the same iteration (`i % 2 == 0` and `== 1`). Only steps of
        the same named optimizer in the same loop of one function (readable helpers from this file and local
        modules inlined) are compared; two names bound to one optimizer object are not.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler(enabled=False)
        use_amp = False
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            if use_amp:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
            optimizer.step()
    """
    good = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler(enabled=False)
        use_amp = False
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            if use_amp:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
    """
    fires = (
        """
import torch
scaler = torch.cuda.amp.GradScaler()
optimizer = torch.optim.AdamW(model.parameters())
for x, y in loader:
    optimizer.zero_grad()
    with torch.autocast("cuda", enabled=use_amp):
        loss = criterion(model(x), y)
    if use_amp:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
    optimizer.step()
""",
        """
import torch
def train(model, loader, optimizer):
    for batch in loader:
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        log(loss)
        optimizer.step()
""",
    )
    silent = (
        """
import torch
def step(optimizer, closure=None):
    for _ in range(1):
        loss = optimizer.step() if closure is None else optimizer.step(closure)
""",
        """
import torch
for step, (x, y) in enumerate(loader):
    criterion(model(x), y).backward()
    if step % 2 == 0:
        optimizer.step()
        optimizer.zero_grad()
    if step % 2 == 1 and warmup_done:
        optimizer.step()
        optimizer.zero_grad()
""",
        """
import torch
for x, y in loader:
    optimizer.zero_grad()
    loss = criterion(model(x), y)
    if use_amp:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
""",
        """
import torch
for x, y in loader:
    optimizer.zero_grad()
    loss = criterion(model(x), y)
    if use_amp:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        continue
    loss.backward()
    optimizer.step()
""",
        """
import torch
opt_d = torch.optim.Adam(netD.parameters())
opt_g = torch.optim.Adam(netG.parameters())
for real in loader:
    opt_d.zero_grad(); d_loss(real).backward(); opt_d.step()
    opt_g.zero_grad(); g_loss(real).backward(); opt_g.step()
""",
        """
import torch
for x, y in loader:
    optimizer.zero_grad()
    loss = criterion(model(x), y)
    if fp16:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
    if not fp16:
        loss.backward()
        optimizer.step()
""",
        """
import torch
for epoch in range(10):
    for i, (x, y) in enumerate(loader):
        criterion(model(x), y).backward()
        if (i + 1) % accum == 0:
            optimizer.step()
            optimizer.zero_grad()
    optimizer.step()
    optimizer.zero_grad()
""",
        """
import torch
for x, y in loader:
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    try:
        scaler.step(optimizer)
    except RuntimeError:
        optimizer.step()
""",
    )

    def check(self, ctx):
        m = ctx.model
        seen: set[int] = set()
        for stream in m.streams:
            steps = [e for e in stream.events if e.kind == STEP and e.flavor in ("optimizer", "scaler") and e.target]
            for i, second in enumerate(steps):
                for first in steps[:i]:
                    if first.loop is not second.loop or first.target != second.target:
                        continue
                    if first.node is second.node or first.exclusive_with(second) or _opposed(first, second):
                        continue
                    if _in_handler(ctx, first) or _in_handler(ctx, second) or not _nested(first, second):
                        continue
                    if _ifexp_arms(ctx, first.node, second.node):
                        continue  # `opt.step() if closure is None else opt.step(closure)`
                    if any(
                        e.kind == BACKWARD and first.order < e.order < second.order
                        and not e.exclusive_with(second) and not e.exclusive_with(first)
                        for e in stream.events
                    ):
                        continue  # new gradients in between: two deliberate updates (e.g. a consistency step)
                    node = report_node(second, first)
                    if id(node) in seen:
                        break
                    seen.add(id(node))
                    yield self.finding(
                        ctx,
                        node,
                        f"`{second.target}` is stepped again here after `{ctx.segment(first.node) or 'a step'}` "
                        f"({first.line_ref}) in the same iteration: the gradients are applied twice; step once per iteration",
                    )
                    break


def _nested(a, b) -> bool:
    """One step runs whenever the other does (its conditions are a subset): ``if amp: scaler.step(opt)`` then
    an unconditional ``opt.step()``. Two steps under unrelated conditions (``if i % 2 == 0`` / ``== 1``) may
    never run in the same iteration."""
    ga, gb = {g.id for g in a.guards}, {g.id for g in b.guards}
    return ga <= gb or gb <= ga


def _opposed(a, b) -> bool:
    """Guarded by opposite outcomes of the same condition (`if amp: ...` / `if not amp: ...`)."""
    for ga in a.guards:
        for gb in b.guards:
            ta, na = _normalize(ga.test, ga.negated)
            tb, nb = _normalize(gb.test, gb.negated)
            if ta == tb and na != nb:
                return True
    return False


def _normalize(test: ast.AST, negated: bool) -> tuple[str, bool]:
    while isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        test, negated = test.operand, not negated
    return ast.dump(test), negated


def _ifexp_arms(ctx, a, b) -> bool:
    """``a`` and ``b`` sit in different arms of one conditional expression."""
    parents = ctx.model.parents

    def arms(node):
        out = {}
        cur = node
        while cur is not None:
            parent = parents.get(id(cur))
            if isinstance(parent, ast.IfExp) and cur is not parent.test:
                out[id(parent)] = cur is parent.body
            cur = parent
        return out

    mine, theirs = arms(a), arms(b)
    return any(k in theirs and theirs[k] != v for k, v in mine.items())


def _in_handler(ctx, ev) -> bool:
    """A step in an ``except`` arm is a fallback for the one in the ``try`` body."""
    cur = ev.via[0] if ev.via else ev.node
    parents = ctx.model.parents
    while cur is not None:
        cur = parents.get(id(cur))
        if isinstance(cur, ast.ExceptHandler):
            return True
        if isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef, ast.For, ast.While)):
            return False
    return False
