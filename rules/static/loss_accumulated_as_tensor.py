"""loss-accumulated-as-tensor: a running total of attached loss tensors keeps every iteration's graph alive."""

from __future__ import annotations

import ast
from typing import Iterator, Optional

from doctor.analysis.events import BACKWARD
from doctor.analysis.names import receiver_key
from doctor.analysis.values import DETACH
from doctor.core.findings import Applicability, Severity
from doctor.lint.fixes import replace_node
from doctor.lint.rule import Rule

class LossAccumulatedAsTensor(Rule):
    name = "loss-accumulated-as-tensor"
    code = "DR501"
    severity = Severity.WARNING
    fixable = Applicability.SAFE
    summary = "A running total adds up attached loss tensors across iterations (`total += loss`), keeping their graphs alive."
    why = """
        A loss tensor that was backpropagated still references its autograd graph. Adding it to a running
        total (`total_loss += loss`) makes the total a tensor whose graph links every iteration's loss, so the
        graph (and, for losses not yet backpropagated, the activations it saved) can never be freed: memory
        grows with every step until the epoch ends or the GPU runs out. Accumulate a plain number
        (`loss.item()`, `float(loss)`) or a detached tensor (`loss.detach()`, which avoids a GPU sync).
        A sum of losses that is itself backpropagated (`loss += w * term` then `loss.backward()`) is correct.
    """
    known_problems = """
        Reported only when the value added (`total += loss`, `total = total + loss`) is a plain name that was
        certainly passed to a `backward()` of the same loop iteration, on the same control path, and not rebound
        in between, or an entry of a dict of loss terms (`losses[k]`, `v` over `losses.items()`) that this
        iteration's backward ran on: that is what makes `.detach()` safe. Stays silent for a total reset inside
        the loop, a total that is itself backpropagated (a sum of loss terms), a loop that sums the micro-steps
        of one accumulation window, code under `no_grad`, and loops that run no backward pass. Other ways of
        keeping losses alive are not checked: appending them to a list (`losses.append(loss)`), or adding a loss
        that is never backpropagated (a validation loss computed with gradients on: see `eval-without-no-grad`).
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        total_loss = 0
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total_loss += loss
        print(f"mean loss {total_loss / len(loader):.3f}")
    """
    good = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        total_loss = 0.0
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
        print(f"mean loss {total_loss / len(loader):.3f}")
    """
    fixed = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        total_loss = 0
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total_loss += loss.detach()
        print(f"mean loss {total_loss / len(loader):.3f}")
    """
    fix_safety = """
        The fix adds `.detach()` to the value added to the total. It is safe: the rule only reports a value that
        already went into a `backward()` of the same iteration, so no gradient can flow through the total
        anyway; `.detach()` keeps the same number, dtype and device (the total stays a tensor, so `total / n`,
        `.item()` and formatting work as before) and only drops the link to the graph. It does not add a host
        sync, unlike `.item()`.
    """
    fires = (
        """
import torch
total_loss = 0
for x, y in loader:
    optimizer.zero_grad()
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    total_loss += loss
""",
        """
import torch
def train_epoch(model, loader, optimizer, scaler):
    running = 0.0
    for x, y in loader:
        loss = model(x, y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        running = running + loss * x.size(0)
    return running / len(loader)
""",
    )
    silent = (
        """
import torch
total_loss = 0
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
    total_loss += loss.item()
""",
        """
import torch
running = 0
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
    running += loss.detach().float()
""",
        """
import torch
for x in loader:
    optimizer.zero_grad()
    loss = 0
    for layer, target in zip(style_layers, targets):
        loss += mse(features[layer], target)
    loss.backward()
    optimizer.step()
""",
        """
import torch
total = 0
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
    total += float(loss)
""",
        """
import torch
with torch.no_grad():
    total = 0
    for x, y in val_loader:
        loss = criterion(model(x), y)
        total += loss
""",
    )

    def check(self, ctx):
        m = ctx.model
        backwards_in: dict[int, list] = {}
        micro: set[int] = set()
        for loop, events in m.loop_views():
            backwards_in.setdefault(id(loop.node), []).extend(e for e in events if e.kind == BACKWARD and not e.no_grad)
            if loop.looks_like_micro_steps():
                micro.add(id(loop.node))
        for stmt, acc, value in _running_totals(m):
            loop = _training_loop(m, stmt, backwards_in)
            backs = backwards_in.get(id(loop), []) if loop is not None else []
            if not backs or m.modes.grad_disabled_at(stmt) or _reset_inside(loop, acc, stmt):
                continue
            if id(loop) in micro:
                continue  # summing the micro-steps of one accumulation window: bounded, released each window
            fn = m.enclosing_function(stmt)
            if any(acc in _keys(m, b.arg) for b in m.all_events() if b.kind == BACKWARD and b.arg is not None
                   and m.enclosing_function(b.node) is fn):
                continue  # the total is itself backpropagated: a sum of loss terms
            leaf = next(
                (l for l in _leaves(value) if _backpropagated_here(m, l, stmt, loop, backs) or _backpropagated_entry(m, l, stmt, backs)),
                None,
            )
            if leaf is None:
                continue
            text = ctx.segment(value)
            simple = isinstance(value, (ast.Name, ast.Attribute, ast.Subscript, ast.Call))
            fix = replace_node(
                ctx, value, f"{text}.detach()" if simple else f"({text}).detach()",
                "accumulate a detached copy", Applicability.SAFE,
            )
            yield self.finding(
                ctx,
                stmt,
                f"`{ctx.segment(stmt)}` adds the attached loss `{ctx.segment(leaf)}` to a running total on every "
                "iteration, keeping each iteration's autograd graph alive: accumulate `.detach()` or `.item()`",
                fix=fix,
            )


def _running_totals(m) -> Iterator[tuple[ast.stmt, str, ast.AST]]:
    """``total += v`` and ``total = total + v``: the statement, the total's key and ``v``."""
    for node in m.nodes(ast.AugAssign, ast.Assign):
        if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add):
            key = receiver_key(node.target)
            if key:
                yield node, key, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.value, ast.BinOp):
            key = receiver_key(node.targets[0])
            bop = node.value
            if key and isinstance(bop.op, ast.Add) and receiver_key(bop.left) == key:
                yield node, key, bop.right


def _innermost_loop(m, node: ast.AST) -> Optional[ast.AST]:
    cur = m.parents.get(id(node))
    while cur is not None and not isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        if isinstance(cur, (ast.For, ast.AsyncFor, ast.While)):
            return cur
        cur = m.parents.get(id(cur))
    return None


def _training_loop(m, node: ast.AST, backwards_in: dict[int, list]) -> Optional[ast.AST]:
    """The innermost loop around ``node`` that runs a backward pass (``for k in losses:`` inside a training
    loop only walks the loss dict)."""
    innermost = _innermost_loop(m, node)
    cur = innermost
    while cur is not None:
        if backwards_in.get(id(cur)):
            return cur
        cur = _innermost_loop(m, cur)
    return innermost


def _backpropagated_entry(m, leaf: ast.AST, stmt: ast.stmt, backs: list) -> bool:
    """``losses[k]`` (or ``v`` in ``for k, v in losses.items()``) where the dict ``losses`` holds the loss terms
    that this iteration's backward ran on (``loss = losses["ce"] + losses["l2"]; loss.backward()``)."""
    name = None
    if isinstance(leaf, ast.Subscript) and isinstance(leaf.value, ast.Name):
        name = leaf.value.id
    elif isinstance(leaf, ast.Name):
        for anc in m.index.ancestors(stmt):
            if isinstance(anc, (ast.For, ast.AsyncFor)) and any(isinstance(t, ast.Name) and t.id == leaf.id for t in ast.walk(anc.target)):
                it = anc.iter
                if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr in ("items", "values") and isinstance(it.func.value, ast.Name):
                    name = it.func.value.id
                break
    if name is None:
        return False
    return any(not b.via and b.arg is not None and name in _keys(m, b.arg) for b in backs)


def _reset_inside(loop: ast.AST, acc: str, stmt: ast.stmt) -> bool:
    """The total is re-initialised inside the loop: it only sums terms of one iteration."""
    for node in ast.walk(loop):
        if isinstance(node, ast.Assign) and node is not stmt and any(receiver_key(t) == acc for t in node.targets):
            return True
    return False


def _keys(m, expr: Optional[ast.AST]) -> set[str]:
    """Names and attribute keys an expression reads, also one assignment deep (``loss = total / n``)."""
    out: set[str] = set()
    if expr is None:
        return out
    for node in ast.walk(expr):
        if isinstance(node, (ast.Name, ast.Attribute)):
            key = receiver_key(node)
            if key:
                out.add(key)
            if isinstance(node, ast.Name):
                value = m.values.value_of(node)
                if value is not None:
                    out.update(k for n in ast.walk(value) if isinstance(n, (ast.Name, ast.Attribute)) for k in [receiver_key(n)] if k)
    return out


def _leaves(expr: ast.AST) -> Iterator[ast.AST]:
    if isinstance(expr, ast.BinOp):
        yield from _leaves(expr.left)
        yield from _leaves(expr.right)
    else:
        yield expr


def _backpropagated_here(m, leaf: ast.AST, stmt: ast.stmt, loop: ast.AST, backs: list) -> bool:
    """``leaf`` is certainly the tensor a ``backward()`` of this iteration ran on (so `.detach()` on it is
    safe): a plain name, backpropagated directly in the loop on the same control path as ``stmt`` (no
    ``if``/``try`` arm between them that holds one but not the other), and not rebound in between."""
    if not isinstance(leaf, ast.Name) or m.values.trace(leaf)[0].kind == DETACH:
        return False
    here = m.values.definition(leaf)
    for b in backs:
        if b.via or b.arg is None or not _same_path(m, b.node, stmt, loop):
            continue
        for name in ast.walk(b.arg):
            if isinstance(name, ast.Name) and name.id == leaf.id:
                there = m.values.definition(name)
                if here is not None and there is not None and here[0] is there[0]:
                    return True
    return False


def _same_path(m, a: ast.AST, b: ast.AST, loop: ast.AST) -> bool:
    """Every conditional block between ``a`` and ``loop`` also holds ``b``."""
    for anc in m.index.ancestors(a):
        if anc is loop:
            return True
        if isinstance(anc, (ast.If, ast.Try, ast.ExceptHandler, ast.For, ast.AsyncFor, ast.While)) or type(anc).__name__ in ("match_case", "TryStar"):
            if not m.values.contains(anc, b):
                return False
    return False
