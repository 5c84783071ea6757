"""zero-grad-after-backward: gradients are cleared between backward() and the optimizer step."""

from __future__ import annotations

from doctor.analysis.events import BACKWARD, CLEAR, STEP
from doctor.core.findings import Severity
from doctor.lint.rule import Rule


class ZeroGradAfterBackward(Rule):
    name = "zero-grad-after-backward"
    code = "DR103"
    severity = Severity.ERROR
    summary = "Gradients are cleared after backward() and before the optimizer step, so the step sees zeros."
    why = """
        `zero_grad()` between `loss.backward()` and `optimizer.step()` throws away the gradients that were just
        computed. The optimizer then steps on zeros (or on `None`, which it skips): the model never learns,
        while weight decay and momentum may still move it. No error is raised.
    """
    known_problems = """
        Stays silent when a new `backward()` runs between the clear and the step (the step then uses fresh
        gradients), when the clear follows an earlier step of the same optimizer (it starts the next iteration),
        when the clear and the step sit in exclusive branches, and when the cleared optimizer is provably not
        the one that steps (two optimizers, as in a GAN). A clear that doctor cannot tie to an optimizer
        (`model.zero_grad()` on a model passed in) is assumed to clear the stepped one. Events are read per
        iteration of the innermost loop, with the functions and methods the loop calls inlined when doctor can
        read them (this file and the local modules the script imports, up to three calls deep).
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.zero_grad()
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
def fit(model, data, optimizer, loss_fn):
    for inputs, targets in data:
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        model.zero_grad()
        optimizer.step()
""",
        """
import torch
opt = torch.optim.SGD(net.parameters(), lr=0.1)
for x, y in loader:
    loss = criterion(net(x), y)
    loss.backward()
    opt.zero_grad()
    opt.step()
""",
    )
    silent = (
        """
import torch
for x, y in loader:
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
""",
        """
import torch
for x, y in loader:
    criterion(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
""",
        """
import torch
opt_d = torch.optim.Adam(netD.parameters())
opt_g = torch.optim.Adam(netG.parameters())
for real in loader:
    d_loss(real).backward()
    opt_g.zero_grad()
    opt_d.step()
    opt_d.zero_grad()
    g_loss(real).backward()
    opt_g.step()
""",
        """
import torch
for x, y in loader:
    aux_loss(model(x)).backward()
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
""",
        """
import torch
for i, (x, y) in enumerate(loader):
    criterion(model(x), y).backward()
    if (i + 1) % 4 == 0:
        optimizer.step()
        optimizer.zero_grad()
""",
    )

    def check(self, ctx):
        m = ctx.model
        for loop, events in m.iteration_scopes():
            stepped = {e.target for e in events if e.kind == STEP and e.target}
            for c in events:
                if c.kind != CLEAR:
                    continue
                before = [b for b in events if b.kind == BACKWARD and b.order < c.order and not b.exclusive_with(c)]
                if not before:
                    continue
                for s in events:
                    if s.kind != STEP or s.order < c.order or s.exclusive_with(c) or not m.clears(s.target, c, stepped):
                        continue
                    if c.target and c.flavor == "optimizer" and s.target and c.target != s.target and stepped >= {c.target, s.target}:
                        continue
                    if any(b.kind == BACKWARD and c.order < b.order < s.order and not b.exclusive_with(s) for b in events):
                        break  # gradients recomputed after the clear
                    if any(e.kind == STEP and before[-1].order < e.order < c.order and m.same_optimizer(e.target, s.target, stepped) for e in events):
                        break  # the clear follows a step: it belongs to the next iteration
                    yield self.finding(
                        ctx,
                        c.site(before[-1]),
                        f"`{ctx.segment(c.node)}` clears the gradients computed by `backward()` on "
                        f"{before[-1].line_ref} before `{ctx.segment(s.node)}` ({s.line_ref}) uses them: "
                        "the optimizer steps on zeros; clear before backward() or after the step",
                    )
                    break
