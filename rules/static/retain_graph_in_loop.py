"""retain-graph-in-loop: backward(retain_graph=True) as the last backward of a training iteration."""

from __future__ import annotations

import ast

from doctor.analysis.events import BACKWARD
from doctor.core.findings import Severity
from doctor.lint.rule import Rule


class RetainGraphInLoop(Rule):
    name = "retain-graph-in-loop"
    code = "DR503"
    severity = Severity.WARNING
    summary = "backward(retain_graph=True) is the last backward pass over a graph built in the same iteration."
    why = """
        `retain_graph=True` keeps the graph's saved activations after backward so that a *second* backward over
        the same graph can run. On the last backward of an iteration nothing uses them again: they stay in
        memory until the loss is overwritten, raising peak memory. It is usually added to silence "Trying to
        backward through the graph a second time", whose real cause is a tensor carried across iterations
        without `.detach()` (an RNN hidden state, a running statistic): then every iteration backpropagates
        through all previous ones, and time and memory grow step by step.
        `retain_graph=True` on the first of two backward passes over one graph (GAN, multi-task) is correct.
    """
    known_problems = """
        Reported only for a literal `retain_graph=True` on the last `backward()` of the innermost loop's
        iteration, when the value backpropagated is built inside that loop. Stays silent when a later backward
        of the same iteration (or a later `torch.autograd.grad` call in the loop body) may reuse the graph, when
        the graph is built once before the loop and reused on purpose, and for `retain_graph=flag` written with
        a variable. A second backward inside an installed library (or more than three calls deep) is not seen,
        so that case is reported.
    """
    bad = """
        import torch
        from torch import nn

        rnn = nn.GRU(8, 16, batch_first=True)
        head = nn.Linear(16, 1)
        optimizer = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-3)
        loader = [(torch.randn(4, 10, 8), torch.randn(4, 10, 1)) for _ in range(16)]
        hidden = torch.zeros(1, 4, 16)

        for x, y in loader:
            optimizer.zero_grad()
            out, hidden = rnn(x, hidden)
            loss = nn.functional.mse_loss(head(out), y)
            loss.backward(retain_graph=True)
            optimizer.step()
    """
    good = """
        import torch
        from torch import nn

        rnn = nn.GRU(8, 16, batch_first=True)
        head = nn.Linear(16, 1)
        optimizer = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-3)
        loader = [(torch.randn(4, 10, 8), torch.randn(4, 10, 1)) for _ in range(16)]
        hidden = torch.zeros(1, 4, 16)

        for x, y in loader:
            optimizer.zero_grad()
            hidden = hidden.detach()
            out, hidden = rnn(x, hidden)
            loss = nn.functional.mse_loss(head(out), y)
            loss.backward()
            optimizer.step()
    """
    fires = (
        """
import torch
hidden = None
for x, y in loader:
    optimizer.zero_grad()
    out, hidden = rnn(x, hidden)
    loss = criterion(out, y)
    loss.backward(retain_graph=True)
    optimizer.step()
""",
        """
import torch
def train(model, loader, optimizer):
    for batch in loader:
        optimizer.zero_grad()
        loss = model(batch).mean()
        torch.autograd.backward(loss, retain_graph=True)
        optimizer.step()
""",
    )
    silent = (
        """
import torch
for x, y in loader:
    optimizer.zero_grad()
    feats = encoder(x)
    loss_a = head_a(feats, y)
    loss_b = head_b(feats, y)
    loss_a.backward(retain_graph=True)
    loss_b.backward()
    optimizer.step()
""",
        """
import torch
out = model(x)
for i in range(out.shape[1]):
    model.zero_grad()
    out[:, i].sum().backward(retain_graph=True)
    grads.append(x.grad.clone())
""",
        """
import torch
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward(retain_graph=True)
    penalty = torch.autograd.grad(loss, x, create_graph=True)
""",
    )

    def check(self, ctx):
        m = ctx.model
        for stream in m.streams:
            events = stream.events
            for ev in events:
                if ev.kind != BACKWARD or ev.loop is None or not _retains(ev.node):
                    continue
                later = [e for e in events if e.kind == BACKWARD and e.order > ev.order and ev.loop in e.loops and not e.exclusive_with(ev)]
                if later or _grad_call_after(m, ev):
                    continue
                if not _built_in_iteration(m, ev):
                    continue  # the graph is built once and reused by the next iterations
                yield self.finding(
                    ctx,
                    ev.anchor,
                    f"`{ctx.segment(ev.node)}` is the last backward of the iteration: retain_graph=True only keeps the "
                    "graph alive (if it was added to silence 'backward through the graph a second time', .detach() "
                    "the tensor carried across iterations instead)",
                )


def _retains(call: ast.AST) -> bool:
    return any(
        kw.arg == "retain_graph" and isinstance(kw.value, ast.Constant) and kw.value.value is True
        for kw in getattr(call, "keywords", [])
    )


def _grad_call_after(m, ev) -> bool:
    """An ``autograd.grad`` call later in the loop body may reuse the retained graph."""
    loop = ev.loop.node
    for node in ast.walk(loop):
        if isinstance(node, ast.Call) and (m.imports.qualify(node.func) or "").endswith("autograd.grad"):
            if (node.lineno, node.col_offset) > (ev.node.lineno, ev.node.col_offset):
                return True
    return False


def _built_in_iteration(m, ev) -> bool:
    """Is the backpropagated value computed inside the innermost loop (rather than once, before it)?"""
    arg = ev.arg
    if arg is None:
        return False
    if ev.via:
        return True
    loop = ev.loop.node
    for node in ast.walk(arg):
        if isinstance(node, ast.Name):
            d = m.values.definition(node)
            if d is not None and m.values.contains(loop, d[0]):
                return True
    return isinstance(arg, ast.Call) and any(
        isinstance(n, ast.Call) and n is not arg and m.values.trace(n)[0].kind in ("model", "loss") for n in ast.walk(arg)
    )
