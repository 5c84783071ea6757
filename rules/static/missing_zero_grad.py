"""missing-zero-grad: a loop steps an optimizer but never clears that optimizer's gradients."""

from __future__ import annotations

import ast

from doctor.analysis.events import BACKWARD, CLEAR, ENGINE_STEP, STEP, first_iteration_only
from doctor.core.findings import Applicability, Severity
from doctor.lint.fixes import insert_after, insert_before, statement_of
from doctor.lint.rule import Rule


class MissingZeroGrad(Rule):
    name = "missing-zero-grad"
    code = "DR102"
    severity = Severity.ERROR
    fixable = Applicability.UNSAFE
    summary = "A loop calls backward() and steps an optimizer, but never clears that optimizer's gradients."
    why = """
        `backward()` adds to `.grad`; it does not overwrite it. Without `optimizer.zero_grad()` (or
        `model.zero_grad()`, or `p.grad = None`) inside the loop, every step applies the sum of all gradients
        since the start, so the effective step size grows each iteration and training diverges or stalls.
        Clearing once before the loop is not enough, and with two optimizers each needs its own clearing.
    """
    known_problems = """
        Stays silent when anything in the loop may clear this optimizer's gradients: `optimizer.zero_grad()`,
        `model.zero_grad()` of a model that may hold its parameters, `p.grad = None` over the parameters, even
        under a condition (an accumulation window that clears every k steps is correct). The exception is a
        clear in one arm of a mode switch (a condition that cannot change inside the loop, such as `if
        cfg.accum_steps > 1:`), which does not serve a backward in the other arm: that arm is reported. It also
        stays silent for DeepSpeed engines (their `step()` clears), for distributed-autograd backward passes,
        and for optimizers stepped in a loop that runs no backward pass. A clear that only runs on the first
        iteration (`if i == 0: optimizer.zero_grad()`) does not count. Functions and methods called from the
        loop are followed when doctor can read them (this file and the local modules the script imports, up to
        three calls deep): a loop whose clearing happens deeper than that, or inside an installed library, is
        reported even though it clears.
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
    fixed = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    """
    fix_safety = """
        The fix inserts `optimizer.zero_grad()` right before the loop's first unconditional `backward()`, or,
        when the step only runs under a condition (an accumulation window that never clears), right after the
        step. It is unsafe because it changes what every step applies (the gradients of one batch instead of a
        growing sum), and because a loop that accumulates on purpose in a way doctor could not read (its
        clearing hidden inside an installed library) would lose that accumulation. It is offered only for a
        plain `optimizer.step()` or `scaler.step(optimizer)` called directly in the loop.
    """
    fires = (
        """
import torch
def train(model, batches, lr=0.01):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for xb, yb in batches:
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        loss.backward()
        opt.step()
""",
        """
import torch
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
optimizer.zero_grad()
for x, y in loader:
    criterion(model(x), y).backward()
    optimizer.step()
""",
        """
import torch
opt_d = torch.optim.Adam(netD.parameters())
opt_g = torch.optim.Adam(netG.parameters())
for real in loader:
    opt_d.zero_grad()
    d_loss(real).backward()
    opt_d.step()
    g_loss(real).backward()
    opt_g.step()
""",
        """
import torch
class Trainer:
    def __init__(self, model):
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters())
    def train_step(self, batch):
        loss = self.model(**batch).loss
        loss.backward()
        self.optimizer.step()
    def fit(self, loader):
        for batch in loader:
            self.train_step(batch)
""",
    )
    silent = (
        """
import torch
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
""",
        """
import torch
for x, y in loader:
    model.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
""",
        """
import torch
params = list(model.parameters())
for x, y in loader:
    for p in params:
        p.grad = None
    criterion(model(x), y).backward()
    optimizer.step()
""",
        """
import torch
optimizer = torch.optim.LBFGS(model.parameters())
for x, y in loader:
    def closure():
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        return loss
    optimizer.step(closure)
""",
        """
import torch
opt_d = torch.optim.Adam(netD.parameters())
opt_g = torch.optim.Adam(netG.parameters())
for real in loader:
    netD.zero_grad()
    d_loss(real).backward()
    opt_d.step()
    netG.zero_grad()
    g_loss(real).backward()
    opt_g.step()
""",
        """
import deepspeed
model_engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=cfg)
for batch in loader:
    loss = model_engine(batch)
    model_engine.backward(loss)
    model_engine.step()
""",
        """
import torch.distributed.autograd as dist_autograd
from torch.distributed.optim import DistributedOptimizer
opt = DistributedOptimizer(torch.optim.SGD, model.parameter_rrefs(), lr=0.05)
for x, y in loader:
    with dist_autograd.context() as context_id:
        loss = criterion(model(x), y)
        dist_autograd.backward(context_id, [loss])
        opt.step(context_id)
""",
        """
import lightning as L
class Model(L.LightningModule):
    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        loss = self.compute_loss(batch)
        self.manual_backward(loss)
        opt.step()
""",
        """
import torch
for epoch in range(10):
    optimizer.zero_grad()
    for x, y in loader:
        criterion(model(x), y).backward()
    optimizer.step()
""",
        """
import torch
for batch in loader:
    loss = model(batch).loss
    loss.backward()
    for opt in optimizers:
        opt.step()
        opt.zero_grad()
""",
    )

    def check(self, ctx):
        m = ctx.model
        for loop, events in m.loop_views():
            backwards = [e for e in events if e.kind == BACKWARD and e.flavor not in ("dist", "deepspeed")]
            if not backwards:
                continue
            if any(e.kind == ENGINE_STEP for e in events):
                continue
            stepped = {e.target for e in events if e.kind == STEP and e.target}
            for s in events:
                if s.kind != STEP or s.flavor == "dist" or _owner_loop(s, events) is not loop:
                    continue
                clears = [c for c in events if c.kind == CLEAR and m.clears(s.target, c, stepped) and not first_iteration_only(c, loop)]
                if clears:
                    # A clearing in one arm of a mode switch does not serve a backward in the other arm.
                    mode = next(
                        (b for b in backwards if b.loop is loop and not b.exclusive_with(s) and all(c.other_mode(b) for c in clears)),
                        None,
                    )
                    if mode is None:
                        continue
                    guard = next(g for g in mode.guards if g.mode_switch and any(g.branch == bid for bid, _ in mode.branches))
                    when = ast.unparse(guard.test) if not guard.negated else f"not ({ast.unparse(guard.test)})"
                    yield self.finding(
                        ctx, s.anchor,
                        f"when `{when}`, `{s.target or 'the optimizer'}` steps on the gradients of the backward on "
                        f"line {mode.site(s).lineno} but nothing clears them in that branch of {loop.where}: only the other branch "
                        f"clears ({clears[0].line_ref}); gradients add up across iterations; clear before that backward",
                    )
                    continue
                target = s.target or "the optimizer"
                gate = next((g for g in s.guards if g.loop is loop and not g.negated), None)
                if gate is not None:
                    # `if i % accum == 0: optimizer.step()`: clearing before every backward would kill the window.
                    message = (
                        f"`{target}` steps when `{ast.unparse(gate.test)}` but its gradients are never cleared in "
                        f"{loop.where}: every step applies all gradients since the start; call "
                        f"`{target}.zero_grad()` right after the step"
                    )
                else:
                    message = (
                        f"`{target}` is stepped every iteration but its gradients are never cleared in {loop.where}: "
                        f"gradients add up across iterations; call `{target}.zero_grad()` each iteration"
                    )
                yield self.finding(ctx, s.anchor, message, fix=_fix(ctx, s, backwards, loop, gated=gate is not None))


def _owner_loop(step, events):
    """The innermost loop around ``step`` that also runs a backward pass: the training iteration."""
    for loop in reversed(step.loops):
        if any(e.kind == BACKWARD and loop in e.loops for e in events):
            return loop
    return None


def _fix(ctx, s, backwards, loop, gated=False):
    if s.via or not s.target or s.flavor not in ("optimizer", "scaler"):
        return None
    if gated:
        stmt = statement_of(ctx, s.node)
        if stmt is None:
            return None
        return insert_after(ctx, stmt, f"{s.target}.zero_grad()", f"clear `{s.target}`'s gradients right after the step")
    first = next((b for b in backwards if b.loop is loop and not b.via and not any(g.loop is loop for g in b.guards)), None)
    if first is None:
        return None
    stmt = statement_of(ctx, first.node)
    if stmt is None:
        return None
    return insert_before(ctx, stmt, f"{s.target}.zero_grad()", f"clear `{s.target}`'s gradients before backward")
