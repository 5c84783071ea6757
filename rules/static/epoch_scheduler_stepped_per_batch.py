"""epoch-scheduler-stepped-per-batch: a schedule sized in epochs stepped every batch (or sized in steps, stepped per epoch)."""

from __future__ import annotations

import ast
import os
from typing import Optional

from doctor.analysis.events import SCHED_STEP, STEP, Event, Loop, is_accumulation_test
from doctor.analysis.names import receiver_key
from doctor.analysis.schedules import EPOCHS, LITERAL, STEPS, HorizonArg, Schedule, is_epoch_loop, iterates_batches, schedule_at
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

#: Schedulers whose horizon, given as a plain number, is read as epochs when it is small (a decay horizon; a
#: warm-up length or a transformers step count stays unknown).
_LITERAL_DECAY = {"StepLR", "MultiStepLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "ExponentialLR", "PolynomialLR"}
#: A literal decay horizon up to this many steps is epoch-sized: run per batch it ends within a few epochs.
LITERAL_EPOCHS_MAX = 500


class EpochSchedulerSteppedPerBatch(Rule):
    name = "epoch-scheduler-stepped-per-batch"
    code = "DR107"
    severity = Severity.ERROR
    summary = "A learning-rate schedule sized in epochs is stepped once per batch (or one sized in steps once per epoch)."
    why = """
        A scheduler counts `step()` calls, nothing else. `StepLR(step_size=30)`, `MultiStepLR(milestones=[30, 60])`
        and `CosineAnnealingLR(T_max=args.epochs)` are written for one `step()` per epoch; called after every
        batch, the whole schedule runs out within the first epoch or two: the learning rate decays to almost
        nothing (or the cosine restarts every few dozen batches) and the rest of training barely moves the
        weights. The opposite mistake, a horizon computed in steps (`T_max=len(loader) * epochs`,
        `get_cosine_schedule_with_warmup(num_training_steps=...)`, `OneCycleLR(steps_per_epoch=...)`) stepped
        once per epoch, leaves the learning rate at its warm-up value: the schedule covers only
        `1/len(loader)` of its length. Neither raises an error; the loss curve just looks like a bad
        hyper-parameter.
    """
    known_problems = """
        The scheduler must be built in the project from a torch (`StepLR`, `MultiStepLR`, `CosineAnnealingLR`,
        `CosineAnnealingWarmRestarts`, `LinearLR`, `ConstantLR`, `PolynomialLR`, `ExponentialLR`, `OneCycleLR`) or
        transformers (`get_*_schedule_with_warmup`, `get_scheduler`) constructor, called where the scheduler is
        assigned or in a helper of this file or a local module that returns it; schedulers from configs,
        registries, `LambdaLR` and `SequentialLR` are not judged. The horizon's unit is read off the code that
        computes it: a name counting epochs (`args.epochs`, `warmup_epochs`) means epochs, a loader's length or a
        name counting steps, iterations or updates (`max_iters`, `num_training_steps`) means steps, followed
        through the assignments of the function that builds it; a horizon from an unreadable config is unknown
        and stays silent. A small literal decay horizon (`step_size=30`, `milestones=[30, 60]`, `T_max=200`, at
        most 500, or `ExponentialLR(gamma <= 0.99)`) stepped per batch in a loop that runs again and again (an epoch
        loop around it, here or around the call of its function) is reported as a warning: its unit is a guess. Literal warm-up lengths and transformers step counts are never read as
        epochs. "Per batch" means the `step()` shares the loop of an optimizer step that this scheduler drives and
        that loop iterates a data loader or sits in an epoch loop; a `step()` under a condition that changes
        inside the batch loop (`if i == len(loader) - 1`, `if is_last_batch`) is taken to run once per epoch
        and stays silent, while an accumulation window (`if (i + 1) % accum == 0`) still counts as per batch.
        "Per epoch" means the `step()` runs in the loop around a batch loop that steps the optimizer. A
        scheduler stepped in both places, a `step()` given an argument (`step(epoch)`), `ReduceLROnPlateau` and
        custom scheduler classes are not reported. Loops run by frameworks (Lightning's `interval`, ignite
        handlers) are not read.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.randn(512, 20), torch.randint(0, 2, (512,))),
            batch_size=32, shuffle=True,
        )
        epochs = 90
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)

        for epoch in range(epochs):
            for x, y in loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
                scheduler.step()
    """
    good = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.randn(512, 20), torch.randint(0, 2, (512,))),
            batch_size=32, shuffle=True,
        )
        epochs = 90
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)

        for epoch in range(epochs):
            for x, y in loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
            scheduler.step()
    """
    fires = (
        # StepLR sized in epochs, stepped in a train_one_epoch helper's batch loop.
        """
import torch
from torch.optim.lr_scheduler import StepLR

def train_one_epoch(model, loader, optimizer, scheduler):
    for x, y in loader:
        optimizer.zero_grad()
        model(x).loss.backward()
        optimizer.step()
        scheduler.step()

def main(args):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = StepLR(optimizer, step_size=args.lr_decay_epochs, gamma=0.1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)
    for epoch in range(args.epochs):
        train_one_epoch(model, loader, optimizer, scheduler)
""",
        # A warm-up counted in epochs, stepped per batch (transformers).
        """
import torch
from transformers import get_linear_schedule_with_warmup

optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
total = len(train_loader) * args.num_epochs
scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=args.warmup_epochs, num_training_steps=total)
for epoch in range(args.num_epochs):
    for batch in train_loader:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
""",
        # A horizon in steps, stepped once per epoch.
        """
import torch
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, epochs=args.epochs, steps_per_epoch=len(train_loader))
for epoch in range(args.epochs):
    for x, y in train_loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
    scheduler.step()
""",
        # A literal epoch-sized decay stepped per batch: a warning.
        """
import torch
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[30, 60, 80], gamma=0.1)
for epoch in range(90):
    for images, target in train_loader:
        loss = criterion(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
""",
    )
    silent = (
        # Per-step schedulers sized in steps.
        """
import torch
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=args.epochs * len(train_loader))
for epoch in range(args.epochs):
    for x, y in train_loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
        scheduler.step()
""",
        """
import torch
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(train_loader) * args.epochs)
for epoch in range(args.epochs):
    for x, y in train_loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
        scheduler.step()
""",
        # An epoch schedule stepped once per epoch, from inside the batch loop on its last batch.
        """
import torch
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.epochs // 3)
for epoch in range(args.epochs):
    for i, (x, y) in enumerate(train_loader):
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
        if i == len(train_loader) - 1:
            scheduler.step()
""",
        # Fractional epochs passed explicitly (CosineAnnealingWarmRestarts' documented per-batch use).
        """
import torch
scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=args.epochs)
iters = len(train_loader)
for epoch in range(args.epochs):
    for i, (x, y) in enumerate(train_loader):
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
        scheduler.step(epoch + i / iters)
""",
        # A warm-up of 100 literal steps: a step count, not epochs.
        """
import torch
warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=100)
for epoch in range(10):
    for x, y in train_loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
        warmup.step()
""",
        # A step-limited loop over iterations, not epochs.
        """
import torch
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.max_iters)
for it in range(args.max_iters):
    x, y = get_batch("train")
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
    scheduler.step()
""",
    )

    def check(self, ctx):
        m = ctx.model
        if "step" not in ctx.source.text:
            return
        found: dict[int, list[tuple[Event, str, Event, Loop, Schedule]]] = {}
        for stream in m.streams:
            events = stream.events
            steps = [e for e in events if e.kind == STEP and e.loop is not None]
            if not steps:
                continue
            stepped = {e.target for e in steps if e.target}
            for ev in events:
                if ev.kind != SCHED_STEP or m.is_plateau(ev):
                    continue
                sched = schedule_at(m, ev.target, ev.via[0] if ev.via else ev.node)
                if sched is None:
                    continue
                driven = [s for s in steps if m.scheduler_drives(ev.target, s.target, stepped, at=ev.node)]
                position = _per_batch(m, ev, driven) or _per_epoch(m, ev, driven)
                if position is None:
                    continue
                where, s, loop = position
                found.setdefault(id(sched.ctor), []).append((ev, where, s, loop, sched))
        seen: set[int] = set()
        for group in found.values():
            if len({where for _, where, _, _, _ in group}) > 1:
                continue  # stepped per batch and per epoch: a schedule switched by configuration
            for ev, where, s, loop, sched in group:
                if id(ev.node) in seen:
                    continue
                finding = self._finding(ctx, m, ev, where, s, loop, sched)
                if finding is not None:
                    seen.add(id(ev.node))
                    yield finding

    def _finding(self, ctx, m, ev: Event, where: str, s: Event, loop: Loop, sched: Schedule):
        built = _line_ref(m, sched)
        call = ctx.segment(ev.node) or "scheduler.step()"
        if where == "batch":
            if sched.name == "OneCycleLR":
                return None  # its epochs and steps_per_epoch describe a per-batch schedule; too many steps raise
            args = sched.of_unit(EPOCHS)
            severity = None
            if not args and sched.name in _LITERAL_DECAY and _repeated(m, loop):
                args = [a for a in sched.of_unit(LITERAL) if a.value is not None and a.value <= LITERAL_EPOCHS_MAX]
                severity = Severity.WARNING
            if not args:
                return None
            what = ", ".join(_arg_text(a) for a in args)
            unit = "epochs" if severity is None else "epochs (its size suggests; doctor cannot see its unit)"
            return self.finding(
                ctx,
                ev.anchor,
                f"`{call}` runs once per batch (in the loop on {_loop_ref(loop)}, with `{ctx.segment(s.node) or 'optimizer.step()'}`), "
                f"but the `{sched.name}` built on {built} counts {what} in {unit}: the schedule runs `len(loader)` "
                "times too fast and is over within the first epochs; step it once per epoch after the batch loop, or count its horizon in steps "
                "(times `len(loader)`)",
                severity=severity,
            )
        args = sched.of_unit(STEPS)
        if not args:
            return None
        what = ", ".join(_arg_text(a) for a in args)
        return self.finding(
            ctx,
            ev.anchor,
            f"`{call}` runs once per epoch (in the loop on {_loop_ref(loop)}, after the batch loop that runs "
            f"`{ctx.segment(s.node) or 'optimizer.step()'}`), but the `{sched.name}` built on {built} counts {what} in "
            "steps: the schedule only covers a fraction of its length; step it after every optimizer step",
        )


def _arg_text(a: HorizonArg) -> str:
    written = ast.unparse(a.expr)
    return f"`{a.param}={written}`" + ("" if a.evidence in (written, "") else f" (from `{a.evidence}`)")


def _line_ref(m, sched: Schedule) -> str:
    line = getattr(sched.ctor, "lineno", 0)
    if sched.program is m or not sched.program.path:
        return f"line {line}"
    return f"{os.path.basename(sched.program.path)}:{line}"


def _loop_ref(loop: Loop) -> str:
    return f"line {getattr(loop.node, 'lineno', 0)}"


def _per_batch(m, ev: Event, driven: list[Event]) -> Optional[tuple[str, Event, Loop]]:
    """The scheduler steps in the loop of an optimizer step it drives, and that loop runs over batches."""
    for s in driven:
        loop = s.loop
        if loop is None or loop.implicit or loop not in ev.loops or is_epoch_loop(loop.node):
            continue
        if not (iterates_batches(_program(m, s), loop.node) or any(is_epoch_loop(a.node) for a in loop.ancestors() if a is not loop)):
            continue
        inner = ev.loops[ev.loops.index(loop):]
        if any(g.loop in inner and not _window_guard(g.test) and _varies(g.test, g.loop) for g in ev.guards):
            continue  # `if i == len(loader) - 1: scheduler.step()`: once per epoch after all
        return "batch", s, loop
    return None


def _per_epoch(m, ev: Event, driven: list[Event]) -> Optional[tuple[str, Event, Loop]]:
    """The scheduler steps in a loop around a batch loop in which the optimizer it drives steps."""
    outer = ev.loop
    if outer is None or outer.implicit or iterates_batches(_program(m, ev), outer.node):
        return None
    for s in driven:
        if outer not in s.loops or s.loop is outer:
            continue
        inner = s.loops[s.loops.index(outer) + 1]
        if inner.implicit or is_epoch_loop(inner.node) or not iterates_batches(_program(m, s), inner.node):
            continue
        return "epoch", s, outer
    return None


def _program(m, ev: Event):
    return ev.program if ev.program is not None else m


def _repeated(m, loop: Loop) -> bool:
    """Does the batch loop run again and again (inside an epoch loop, here or around a call of its function)?"""
    if any(is_epoch_loop(a.node) or isinstance(a.node, (ast.For, ast.While)) for a in loop.ancestors() if a is not loop):
        return True
    data = getattr(m, "data", None)
    return data is not None and m.owns(loop.node) and data.repeated(loop.node) is not None


def _window_guard(test: ast.AST) -> bool:
    """An accumulation window (`(i + 1) % accum == 0`), not an end-of-epoch gate (`% len(loader)`, `% iters_per_epoch`)."""
    if not is_accumulation_test(test):
        return False
    for node in ast.walk(test):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len":
            return False
        ident = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        if "epoch" in ident.lower() or "last" in ident.lower():
            return False
    return True


def _varies(test: ast.AST, loop: Optional[Loop]) -> bool:
    """Can the condition change from one batch to the next (it reads what the batch loop binds, or calls)?"""
    if loop is None:
        return True
    stored = loop.stored_names
    for node in ast.walk(test):
        if isinstance(node, (ast.Call, ast.Await, ast.NamedExpr)):
            return True
        if isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Load):
            key = receiver_key(node)
            if key is None or any(key == s or key.startswith(s + ".") for s in stored):
                return True
    return False
