"""scheduler-before-optimizer: an LR scheduler steps before the optimizer it drives."""

from __future__ import annotations

import ast

from doctor.analysis.events import BACKWARD, SCHED_STEP, STEP
from doctor.analysis.names import receiver_key
from doctor.core.findings import Applicability, Severity
from doctor.lint.fixes import move_after, statement_of, statements_between
from doctor.lint.rule import Rule


class SchedulerBeforeOptimizer(Rule):
    name = "scheduler-before-optimizer"
    code = "DR101"
    severity = Severity.ERROR
    fixable = Applicability.UNSAFE
    summary = "An LR scheduler steps before the optimizer it drives has stepped in the same iteration."
    why = """
        Since PyTorch 1.1 a scheduler's `step()` must follow `optimizer.step()`. Stepping it first advances the
        schedule before the first update, so the first learning-rate value is skipped and every later value
        comes one step early (warm-up is cut short, decays happen early). PyTorch only warns once, on the first
        iteration, and the run goes on. The same happens when `scheduler.step()` sits at the top of an epoch
        loop whose batch loop then trains (the pre-1.1 convention).
    """
    known_problems = """
        Stays silent when the order cannot be judged: `ReduceLROnPlateau`, a `step()` that is given an argument
        (`scheduler.step(val_loss)`, `scheduler.step(epoch)`), custom scheduler classes (a project class that is
        not a torch LR scheduler, or a class out of reach without a torch-style name such as `WarmUpLR`), and a
        scheduler step guarded so that it skips the first iteration (`if epoch > 0: scheduler.step()`), and a
        deliberate order: the step inside `warnings.catch_warnings()` (PyTorch's order warning silenced on
        purpose). A
        scheduler that runs on every micro-step of an accumulation window is left to
        `scheduler-every-micro-step`. The order is read inside one function, with the functions and methods it
        calls inlined when doctor can read them (this file and the local modules the script imports, up to three
        calls deep); steps taken inside an installed library are not seen. When doctor cannot see which
        optimizer a scheduler was built on (both passed in as parameters, and no caller it can read passes
        them), the scheduler is assumed to drive the optimizer stepped in the same loop; with two optimizers
        handed in that way this can report a scheduler that drives the other one.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            scheduler.step()
            optimizer.step()
    """
    good = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            scheduler.step()
    """
    fixed = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            scheduler.step()
    """
    fix_safety = """
        The fix moves the `scheduler.step()` statement to just after the optimizer step. It is unsafe because it
        changes the learning rate of every step: the run follows the intended schedule from then on, so its
        numbers no longer match earlier runs, and hyper-parameters tuned around the shifted schedule may need
        tuning again. It is offered only when both calls are statements of the same function (not reached
        through a helper); the top-of-the-epoch form gets no fix, since where the call belongs depends on the
        code after the batch loop.
    """
    fires = (
        """
import torch
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.StepLR(opt, 10)
for x, y in loader:
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    sched.step()
    opt.step()
""",
        """
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR
optimizer = torch.optim.AdamW(model.parameters())
scheduler = CosineAnnealingLR(optimizer, T_max=10)
for epoch in range(10):
    scheduler.step()
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
""",
        """
import torch
scaler = torch.cuda.amp.GradScaler()
def train(model, loader, optimizer, lr_scheduler):
    for batch in loader:
        optimizer.zero_grad()
        with torch.autocast("cuda"):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        lr_scheduler.step()
        scaler.step(optimizer)
        scaler.update()
""",
    )
    silent = (
        """
import torch
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
for epoch in range(10):
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
    scheduler.step()
""",
        """
import torch
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
for epoch in range(10):
    scheduler.step(val_loss)
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
""",
        """
import torch
def train(model, loader, optimizer, scheduler):
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
        scheduler.step()
""",
        """
import torch
def train_epoch(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
def main():
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
    for epoch in range(10):
        train_epoch(model, loader, optimizer)
        validate(model)
        scheduler.step()
""",
        """
import torch
opt_d = torch.optim.Adam(netD.parameters())
opt_g = torch.optim.Adam(netG.parameters())
sched_d = torch.optim.lr_scheduler.StepLR(opt_d, 10)
for x in loader:
    opt_d.zero_grad(); d_loss(x).backward(); opt_d.step()
    sched_d.step()
    opt_g.zero_grad(); g_loss(x).backward(); opt_g.step()
""",
    )

    def check(self, ctx):
        m = ctx.model
        for stream in m.streams:
            events = stream.events
            stepped = {e.target for e in events if e.kind == STEP and e.target}
            for k in events:
                if k.kind != SCHED_STEP or m.is_plateau(k) or _skips_first_iteration(k):
                    continue
                scope = k.loop
                same_iter = [
                    s for s in events
                    if s.kind == STEP and (scope is None or scope in s.loops)
                    and m.scheduler_drives(k.target, s.target, stepped, at=k.node) and not s.exclusive_with(k)
                ]
                if any(s.order < k.order for s in same_iter):
                    continue  # the scheduler follows an optimizer step of this iteration
                later = [s for s in same_iter if s.order > k.order]
                if not later:
                    continue
                s = later[0]
                if any(not k.guarded_by(g) and g.loop in k.loops for g in s.accumulation_guards()):
                    continue  # the scheduler runs every micro-step: scheduler-every-micro-step says it better
                if s.loop is scope:
                    msg = (
                        f"`{ctx.segment(k.node)}` runs before `{ctx.segment(s.node)}` ({s.line_ref}) in the "
                        "same iteration: the first learning rate of the schedule is skipped; step the optimizer first"
                    )
                    fix = _fix(ctx, k, s)
                elif scope is not None and any(
                    b.kind == BACKWARD and s.loop in b.loops and b.order > k.order for b in events
                ):
                    msg = (
                        f"`{ctx.segment(k.node)}` runs at the top of the epoch loop, before the batch loop steps the "
                        f"optimizer ({s.line_ref}): the first learning rate is skipped; call it after the batch loop"
                    )
                    fix = None
                else:
                    continue
                yield self.finding(ctx, k.site(s), msg, fix=fix)


def _skips_first_iteration(k) -> bool:
    """`if epoch > 0: scheduler.step()` at the top of an iteration steps after the previous iteration's optimizer."""
    counters = {"epoch", "step", "global_step", "iteration", "it", "i", "batch_idx", "idx", "n_iter", "iter_num"}
    if k.loop is not None and k.loop.target is not None:
        counters |= {n.id for n in ast.walk(k.loop.target) if isinstance(n, ast.Name)}
    for g in k.guards:
        if g.loop is not k.loop or g.negated:
            continue
        t = g.test
        if isinstance(t, ast.Name) and t.id in counters:  # `if epoch:`
            return True
        if isinstance(t, ast.UnaryOp) and isinstance(t.op, ast.Not) and isinstance(t.operand, ast.Name) and "first" in t.operand.id.lower():
            return True
        if (
            isinstance(t, ast.Compare) and len(t.ops) == 1 and isinstance(t.left, ast.Name) and t.left.id in counters
            and isinstance(t.comparators[0], ast.Constant)
        ):
            op, c = t.ops[0], t.comparators[0].value
            if (isinstance(op, (ast.Gt, ast.NotEq)) and c == 0) or (isinstance(op, ast.GtE) and c == 1):
                return True
    return False


#: Reading any of these between the two steps sees the learning rate: moving the scheduler step past them
#: would change what they read (a logged `get_last_lr()`, a value taken from `param_groups`).
_READS_LR = {"get_last_lr", "get_lr", "param_groups", "last_epoch", "_last_lr", "lr"}


def _fix(ctx, k, s):
    if k.via or s.via:
        return None
    ks, ss = statement_of(ctx, k.node), statement_of(ctx, s.node)
    if ks is None or ss is None:
        return None
    between = statements_between(ctx, ks, ss)
    if between is None or any(_reads_lr(n, k.target) for stmt in between for n in ast.walk(stmt)):
        return None  # the move would change what those statements read: left to a human
    return move_after(ctx, ks, ss, "move the scheduler step after the optimizer step")


def _reads_lr(node, scheduler) -> bool:
    if isinstance(node, ast.Attribute) and node.attr in _READS_LR:
        return True
    return scheduler is not None and isinstance(node, (ast.Name, ast.Attribute)) and receiver_key(node) == scheduler
