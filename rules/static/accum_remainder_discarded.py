"""accum-remainder-discarded: the last partial accumulation window of each epoch is cleared without a step."""

from __future__ import annotations

import ast
import re

from doctor.analysis.events import CLEAR, STEP, first_iteration_only
from doctor.core.findings import Applicability, Severity
from doctor.lint.fixes import replace_node
from doctor.lint.rule import Rule

#: Words that make a step condition (or a loop bound) about the end of the data, not just the window.
_END_WORDS = re.compile(r"last|end|final|len|remain|total|num_batches|steps_per_epoch|epoch_?size|n_?batches|max_?step", re.I)


#: Function names that say the function runs once per epoch.
_PER_EPOCH = re.compile(r"(^|_)epoch($|_)|epoch$", re.I)


class AccumRemainderDiscarded(Rule):
    name = "accum-remainder-discarded"
    code = "DR205"
    severity = Severity.WARNING
    fixable = Applicability.UNSAFE
    summary = "Gradient accumulation clears its window once per epoch without stepping the last partial window: those micro-batches are computed and thrown away."
    why = """
        A step gated by `(i + 1) % k == 0` runs after every k-th batch. When the number of batches per epoch
        is not a multiple of k, the last `len(loader) % k` batches of the epoch are forwarded and
        backpropagated, but the next step never comes: an `optimizer.zero_grad()` at the start (or end) of
        each epoch wipes their gradients. That data never trains the model (the same samples every epoch
        when the loader does not shuffle), and the compute is wasted, silently. Step on the epoch's last
        batch too (`if (i + 1) % k == 0 or i + 1 == len(loader):`).
    """
    known_problems = """
        Reported when the step is gated by a plain modulo condition on the batch counter of a `for` loop (no
        `or`, nothing about the end of the data), no other step of that optimizer can flush the window (a step
        in the other arm of a run-wide mode switch such as `if cfg.ACCUMULATION_STEPS > 1: ... else: ...` does
        not count), and a gradient clear of that optimizer runs once per pass of that loop: in the epoch loop
        around it, before or after it (or under `if i == 0:` inside it, where `i` is the loop's own index: a counter
        kept across epochs is zero only once), or at the top of a function whose every
        pass is an epoch (called from a loop in this file or another file of the project, or named for it:
        `train_one_epoch`). The finding does not know the number of batches: when it is a multiple of k (or k is
        1) nothing is lost, and the message says so. A loop whose bound names the accumulation factor
        (`range(steps * accum)`) is taken to be sized in windows and stays silent. Flags computed elsewhere
        (`should_step`, `accelerator.sync_gradients`) and `accelerator.accumulate(...)` (which syncs on the
        loader's last batch) are trusted; a flush condition is taken at face value even when it only fires for
        short epochs. When the clear and the step both sit in another file, that file reports it, not the call
        here. Without any clear per epoch the remainder spills into the next epoch's first window instead, which
        this rule does not report.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(18)]
        accum_steps = 4

        for epoch in range(10):
            optimizer.zero_grad()
            for i, (x, y) in enumerate(loader):
                loss = loss_fn(model(x), y) / accum_steps
                loss.backward()
                if (i + 1) % accum_steps == 0:
                    optimizer.step()
                    optimizer.zero_grad()
    """
    good = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(18)]
        accum_steps = 4

        for epoch in range(10):
            optimizer.zero_grad()
            for i, (x, y) in enumerate(loader):
                loss = loss_fn(model(x), y) / accum_steps
                loss.backward()
                if (i + 1) % accum_steps == 0 or i + 1 == len(loader):
                    optimizer.step()
                    optimizer.zero_grad()
    """
    fixed = good
    fix_safety = """
        The fix adds `or i + 1 == len(loader)` to the step's condition, so the epoch's last batch steps too
        (the result is the good example). It is unsafe because it adds one update per epoch, made from fewer
        micro-batches whose losses are still divided by k (a smaller step), and it changes every later update
        and schedule position. It is offered only for `for i, ... in enumerate(loader)` with the condition
        written as `(i + 1) % k == 0`, and when `loader` is a list or a DataLoader over a dataset with a length
        (`len(loader)` would raise for a streaming dataset without one).
    """
    fires = (
        """
import torch
def train_one_epoch(model, loader, optimizer, accum_steps):
    model.train()
    optimizer.zero_grad()
    for step, batch in enumerate(loader):
        loss = model(**batch).loss / accum_steps
        loss.backward()
        if (step + 1) % accum_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
for epoch in range(num_epochs):
    train_one_epoch(model, train_loader, optimizer, 8)
""",
        """
import torch
for epoch in range(epochs):
    for i, (x, y) in enumerate(loader):
        if i == 0:
            optimizer.zero_grad()
        (criterion(model(x), y) / accum).backward()
        if (i + 1) % accum == 0:
            optimizer.step()
            optimizer.zero_grad()
""",
        """
import torch
for epoch in range(epochs):
    for i, (x, y) in enumerate(loader):
        (criterion(model(x), y) / accum).backward()
        if (i + 1) % accum == 0:
            optimizer.step()
            optimizer.zero_grad()
    optimizer.zero_grad()
    validate(model)
""",
        """
import torch
from torch.utils.data import DataLoader
train_loader = DataLoader(train_set, batch_size=32, shuffle=True)
for epoch in range(epochs):
    optimizer.zero_grad()
    for step, (x, y) in enumerate(train_loader):
        (criterion(model(x), y) / grad_accum).backward()
        if (step + 1) % grad_accum == 0:
            optimizer.step()
            optimizer.zero_grad()
""",
    )
    silent = (
        """
import torch
for epoch in range(epochs):
    optimizer.zero_grad()
    for i, (x, y) in enumerate(loader):
        (criterion(model(x), y) / accum).backward()
        if (i + 1) % accum == 0 or (i + 1) == len(loader):
            optimizer.step()
            optimizer.zero_grad()
""",
        """
import torch
for epoch in range(epochs):
    optimizer.zero_grad()
    for i, (x, y) in enumerate(loader):
        (criterion(model(x), y) / accum).backward()
        if (i + 1) % accum == 0:
            optimizer.step()
            optimizer.zero_grad()
    optimizer.step()
    optimizer.zero_grad()
""",
        """
import torch
optimizer.zero_grad()
for epoch in range(epochs):
    for i, (x, y) in enumerate(loader):
        (criterion(model(x), y) / accum).backward()
        if (i + 1) % accum == 0:
            optimizer.step()
            optimizer.zero_grad()
""",
        """
from accelerate import Accelerator
accelerator = Accelerator(gradient_accumulation_steps=4)
for epoch in range(epochs):
    optimizer.zero_grad()
    for batch in loader:
        with accelerator.accumulate(model):
            accelerator.backward(model(**batch).loss)
            optimizer.step()
            optimizer.zero_grad()
""",
        """
import torch
for epoch in range(epochs):
    optimizer.zero_grad()
    for i in range(steps_per_epoch * grad_accum):
        (model(next(data_iter)).loss / grad_accum).backward()
        if (i + 1) % grad_accum == 0:
            optimizer.step()
            optimizer.zero_grad()
""",
        """
import torch
for epoch in range(epochs):
    optimizer.zero_grad()
    for batch in loader:
        for micro in batch.split(micro_bs):
            (model(micro).loss / n_micro).backward()
        optimizer.step()
        optimizer.zero_grad()
""",
    )

    def check(self, ctx):
        m = ctx.model
        seen: set[int] = set()
        for events, stepped, acc in m.accumulations():
            step = acc.step
            loop = acc.micro_loop
            if acc.guard is None or step.in_accumulate_context or not isinstance(loop.node, (ast.For, ast.AsyncFor)):
                continue
            if not _plain_modulo(acc.guard.test) or _sized_in_windows(loop, acc.guard.test):
                continue
            if any(
                e.kind == STEP and e is not step and m.same_optimizer(e.target, step.target, stepped) and not e.other_mode(step)
                for e in events
            ):
                continue  # another step of this optimizer (a flush after the loop, or on the last batch)
            clear = self._epoch_clear(m, events, stepped, acc)
            if clear is None or clear.program is not None and step.program is not None:
                continue  # (the clear and the step both in another file: that file reports it)
            node = clear.site(step)
            if id(node) in seen or id(step.node) in seen:
                continue
            seen.update((id(node), id(step.node)))
            where = "after" if clear.order > max(b.order for b in acc.backwards) and loop not in clear.loops else "at the start of"
            yield self.finding(
                ctx,
                node,
                f"`{_text(ctx, clear)}` clears the gradients once per epoch ({where} each pass of the loop on line "
                f"{loop.node.lineno}), but `{_text(ctx, step)}` ({step.line_ref}) runs only when "
                f"`{ctx.segment(acc.guard.test)}`: unless the number of batches per epoch is a multiple of the "
                "accumulation steps, the last partial window's micro-batches are computed and thrown away every "
                "epoch; also step on the epoch's last batch",
                fix=_fix(ctx, m, acc),
            )

    @staticmethod
    def _epoch_clear(m, events, stepped, acc):
        """A clear of the stepped optimizer that runs once per pass of the micro-step loop, outside it."""
        loop = acc.micro_loop
        outer = loop.parent
        first = min(e.order for e in acc.backwards)
        for c in events:
            if c.kind != CLEAR or not m.clears(acc.step.target, c, stepped) or c.exclusive_with(acc.step):
                continue
            if loop in c.loops:
                # `if i == 0: optimizer.zero_grad()`: clears at the start of every pass.
                if c.loop is loop and first_iteration_only(c, loop) and not c.accumulation_guards() and _restarts(c, loop):
                    return c
                continue
            if loop not in acc.step.loops or c.loops != acc.step.loops[: acc.step.loops.index(loop)]:
                continue  # not once per pass of the micro-step loop
            if any(g.loop is outer for g in c.guards):
                continue  # `if epoch == 0: zero_grad()` and other per-epoch conditions
            if outer is not None:
                return c
            if c.order < first and _repeated(m, loop):
                return c  # at the top of a function called once per epoch
        return None


def _restarts(clear, loop) -> bool:
    """The ``== 0`` test of ``if i == 0: zero_grad()`` reads a variable of the loop itself (``for i, batch in
    enumerate(loader)``), which starts again at every pass; a counter kept across passes (``step == 0``, with
    ``step += 1`` in the loop) is zero once per run, not once per epoch."""
    targets = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)} if loop.target is not None else set()
    for g in clear.guards:
        t = g.test
        if g.loop is loop and isinstance(t, ast.Compare) and isinstance(t.left, ast.Name):
            return t.left.id in targets
    return False


def _plain_modulo(test: ast.AST) -> bool:
    """`(i + 1) % k == 0`, `i % k == k - 1`, `not (i + 1) % k`: a window condition and nothing else."""
    has_mod = False
    for node in ast.walk(test):
        if isinstance(node, (ast.BoolOp, ast.Call, ast.IfExp, ast.Subscript)):
            return False
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            has_mod = True
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name and _END_WORDS.search(name):
            return False
    return has_mod


def _sized_in_windows(loop, test: ast.AST) -> bool:
    """`for i in range(steps * accum)`: the loop's bound is a multiple of the window (names its factor)."""
    divisors = set()
    for node in ast.walk(test):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            divisors.add(ast.unparse(node.right))
    bound = ast.unparse(loop.iter) if loop.iter is not None else ""
    return any(d and d in bound for d in divisors)


def _repeated(m, loop) -> bool:
    """Does the function holding ``loop`` run once per pass of a loop (its caller's, in this file or another),
    or say so in its name (``train_one_epoch``)?"""
    fn = m.enclosing_function(loop.node)
    if fn is m.tree:
        return False
    if _PER_EPOCH.search(getattr(fn, "name", "")):
        return True
    for program, call in m.call_sites(fn):
        for anc in program.index.ancestors(call):
            if isinstance(anc, (ast.For, ast.AsyncFor, ast.While)):
                return True
            if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                break
    return False


def _text(ctx, ev) -> str:
    if ev.program is None:
        return ctx.segment(ev.node)
    func = getattr(ev.node, "func", None)
    return f"{func.attr}()" if isinstance(func, ast.Attribute) else "the clear"


def _fix(ctx, m, acc):
    """`(i + 1) % k == 0` -> `(i + 1) % k == 0 or i + 1 == len(loader)` for `for i, ... in enumerate(loader)`."""
    test = acc.guard.test
    loop = acc.micro_loop.node
    if acc.guard.negated or acc.step.via or acc.step.program is not None or not isinstance(test, ast.Compare):
        return None
    it = loop.iter
    if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "enumerate" and len(it.args) == 1 and not it.keywords):
        return None
    target = loop.target
    if not (isinstance(target, ast.Tuple) and target.elts and isinstance(target.elts[0], ast.Name)):
        return None
    index = target.elts[0].id
    if not (len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq) and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == 0):
        return None
    mod = test.left
    if not (isinstance(mod, ast.BinOp) and isinstance(mod.op, ast.Mod)):
        return None
    counter = mod.left
    if not (isinstance(counter, ast.BinOp) and isinstance(counter.op, ast.Add) and isinstance(counter.left, ast.Name)
            and counter.left.id == index and isinstance(counter.right, ast.Constant) and counter.right.value == 1):
        return None
    source = it.args[0]
    if not isinstance(source, (ast.Name, ast.Attribute)) or not _has_length(m, source, loop):
        return None
    text = ctx.segment(test)
    return replace_node(ctx, test, f"{text} or {index} + 1 == len({ctx.segment(source)})", "also step on the epoch's last batch")


def _has_length(m, source, loop) -> bool:
    """A list, or DataLoaders over datasets that do not stream."""
    if isinstance(source, ast.Name):
        value = m.values.value_of(source)
        if isinstance(value, (ast.List, ast.ListComp)):
            return True
    calls = m.data.loaders(source, m.enclosing_function(loop))
    if not calls:
        return False
    return all(c.dataset is not None and not m.data.dataset_streams(c.dataset) for c in calls)
