"""train-mode-not-restored: mid-training validation switches to eval mode and training continues in it."""

from __future__ import annotations

import ast
import re

from doctor.analysis.events import BACKWARD, EVAL, FORWARD, STEP, TRAIN
from doctor.analysis.modes import report_node_in
from doctor.core.findings import Severity
from doctor.lint.rule import Rule


class TrainModeNotRestored(Rule):
    name = "train-mode-not-restored"
    code = "DR603"
    severity = Severity.ERROR
    summary = "`model.eval()` runs inside the training loop and training continues without `model.train()`."
    why = """
        Validating every N steps with `model.eval()` and not switching back leaves dropout off and batch norm
        frozen for the rest of training. Nothing errors: the loss curve just changes shape after the first
        validation, regularisation disappears, and batch-norm statistics stop adapting. The `model.train()`
        belongs right after the evaluation (or at the top of every iteration/epoch).
    """
    known_problems = """
        Reported for a `.eval()` inside a loop that runs backward passes and optimizer steps, when no `.train()`
        of the same model (or a parent or child of it) runs anywhere in that loop's iteration. Stays silent when
        the evaluation is followed by `break`/`return`/`raise`, for models that are frozen on purpose (their
        forward runs under `no_grad`, the file sets `requires_grad` to False or filters parameters by it, names
        like `ema`/`teacher`/`target`, or the optimizer provably trains other modules), and for `m.eval()`
        inside a loop over submodules. A `.train()` done inside an installed library (or more than three calls
        deep) is not seen, so that case is reported.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 2))
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        train_loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        val_loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(4)]


        @torch.no_grad()
        def evaluate(model, loader):
            return sum(loss_fn(model(x), y).item() for x, y in loader) / len(loader)


        model.train()
        for step, (x, y) in enumerate(train_loader):
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            if step % 5 == 0:
                model.eval()
                print(step, evaluate(model, val_loader))
    """
    good = """
        import torch
        from torch import nn

        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 2))
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        train_loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        val_loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(4)]


        @torch.no_grad()
        def evaluate(model, loader):
            return sum(loss_fn(model(x), y).item() for x, y in loader) / len(loader)


        model.train()
        for step, (x, y) in enumerate(train_loader):
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            if step % 5 == 0:
                model.eval()
                print(step, evaluate(model, val_loader))
                model.train()
    """
    fires = (
        """
import torch
def evaluate(model, loader):
    model.eval()
    with torch.no_grad():
        return sum(model(x).sum().item() for x in loader)
def train(model, loader, val_loader, optimizer, epochs):
    for epoch in range(epochs):
        model.train()
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
            if step % 1000 == 0:
                evaluate(model, val_loader)
""",
        """
import torch
model.train()
for step, (x, y) in enumerate(train_loader):
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
    if step % 500 == 0:
        model.eval()
        with torch.no_grad():
            val = sum(criterion(model(a), b).item() for a, b in val_loader)
""",
        """
import torch
def evaluate(model, loader):
    model.eval()
    with torch.no_grad():
        return sum(criterion(model(x), y).item() for x, y in loader)
def train(model, optimizer, loader, val_loader, epochs):
    model.train()
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        evaluate(model, val_loader)
""",
    )
    silent = (
        """
import torch
for p in model.parameters():
    p.requires_grad = False
model.fc.requires_grad_(True)
optimizer = torch.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()), lr=0.1)
for epoch in range(10):
    model.eval()  # fine-tune the head, keep the frozen BatchNorm statistics
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
""",
        """
import copy
import torch
ema_model = copy.deepcopy(model)
for step, (x, y) in enumerate(loader):
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
    ema_model.eval()
    with torch.no_grad():
        for e, p in zip(ema_model.parameters(), model.parameters()):
            e.mul_(0.999).add_(p, alpha=0.001)
""",
        """
import torch
model.train()
for n, m in model.named_modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.eval()
for x, y in loader:
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
""",
        """
import torch
for step, (x, y) in enumerate(train_loader):
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
    if step % 500 == 0:
        model.eval()
        validate(model)
        model.train()
""",
        """
import torch
def evaluate(model, loader):
    model.eval()
    with torch.no_grad():
        loss = sum(criterion(model(x), y).item() for x, y in loader)
    model.train()
    return loss
for epoch in range(10):
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
    evaluate(model, val_loader)
""",
        """
import torch
for epoch in range(10):
    model.train()
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
    model.eval()
    validate(model, val_loader)
""",
        """
import torch
backbone.eval()
head = torch.nn.Linear(2048, 10)
opt = torch.optim.SGD(head.parameters(), lr=0.1)
for epoch in range(10):
    backbone.eval()
    for x, y in loader:
        with torch.no_grad():
            feats = backbone(x)
        opt.zero_grad()
        criterion(head(feats), y).backward()
        opt.step()
""",
        """
import torch
optimizer = torch.optim.SGD(model.fc.parameters(), lr=0.1)
for epoch in range(10):
    model.eval()  # linear probe: keep the frozen BatchNorm statistics
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
""",
        """
import torch
for step, (x, y) in enumerate(train_loader):
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
    if step == max_steps:
        model.eval()
        evaluate(model, val_loader)
        break
""",
    )

    def check(self, ctx):
        m = ctx.model
        seen: set[int] = set()
        for loop, events in m.loop_views():
            if not (any(e.kind == BACKWARD for e in events) and any(e.kind == STEP for e in events)):
                continue
            for ev in events:
                if ev.kind != EVAL:
                    continue
                if ev.loop is not None and not any(b.kind == BACKWARD and ev.loop in b.loops for b in events):
                    continue  # `for m in model.modules(): m.eval()` freezes chosen submodules (BN) on purpose
                if _restored(m, ev, events) or _frozen_on_purpose(m, ev, events) or _leaves_loop(ctx, ev, loop):
                    continue
                if not _trains_after(ev, events, loop):
                    continue
                node = report_node_in(ev, loop.node)
                if id(node) in seen:
                    continue
                seen.add(id(node))
                # `model.train()` at the top of an outer (epoch) loop restores the mode only for the next epoch.
                outer = {id(l.node) for l in ev.loops if l.node is not loop.node}
                later = next(
                    (t for t in m.all_events() if t.kind == TRAIN and _related(t.target, ev.target)
                     and t.loop is not None and id(t.loop.node) in outer),
                    None,
                )
                until = (
                    f"is only switched back at the top of the next epoch ({later.line_ref})" if later
                    else "nothing switches it back"
                )
                yield self.finding(
                    ctx,
                    node,
                    f"`{ctx.segment(ev.node)}` switches `{ev.target}` to eval mode inside the training loop (line "
                    f"{loop.node.lineno}) and {until}: the following training steps run with dropout off and batch "
                    f"norm frozen; call `{ev.target}.train()` right after evaluating",
                )


_FROZEN_NAME = re.compile(r"ema|teacher|target|frozen|momentum|(^|[._])ref|reference|old|avg|swa|averaged", re.I)


def _related(a, b) -> bool:
    if a is None or b is None or a == b:
        return True
    return a.startswith(b + ".") or b.startswith(a + ".") or a.rsplit(".", 1)[-1] == b.rsplit(".", 1)[-1]


def _restored(m, ev, events) -> bool:
    """A ``.train()`` of the same model runs somewhere in the iteration (after the eval, or at its top)."""
    return any(t.kind == TRAIN and _related(t.target, ev.target) for t in events)


def _trains_after(ev, events, loop) -> bool:
    """A backward of this loop runs after the eval (later in the iteration, or in the next one)."""
    return any(b.kind == BACKWARD and loop in b.loops for b in events)


def _frozen_on_purpose(m, ev, events) -> bool:
    """Linear probes: the module put in eval mode is not (wholly) what the optimizer trains, or runs under no_grad."""
    forwards = [
        f for f in events
        if f.kind == FORWARD and f.target == ev.target and any(b.kind == BACKWARD and b.loop is f.loop for b in events)
    ]
    if forwards and all(f.no_grad for f in forwards):
        return True  # a frozen feature extractor: `with torch.no_grad(): feats = backbone(x)`
    if _requires_grad_off(m, ev.target):
        return True
    if _FROZEN_NAME.search(ev.target or ""):
        return True  # EMA / teacher / target networks are evaluated, never trained
    stepped = [s for s in events if s.kind == STEP and s.target]
    roots = []
    for s in stepped:
        info = m.info(s.target)
        if info is None or info.param_roots is None:
            roots = []
            break
        roots.extend(info.param_roots)
    if roots:
        # e.g. `backbone.eval()` while only `head` (or `model.fc`) is optimised
        return not any(r == ev.target or ev.target.startswith(r + ".") for r in roots)
    # Optimizer built elsewhere: only report a model we see being run with gradients in the training loop.
    return not any(
        f.kind == FORWARD and _related(f.target, ev.target) and not f.no_grad
        and any(b.kind == BACKWARD and b.loop is f.loop for b in events)
        for f in events
    )


def _requires_grad_off(m, key) -> bool:
    """The file freezes parameters (``requires_grad_(False)``, ``p.requires_grad = False``, an optimizer over
    ``filter(lambda p: p.requires_grad, ...)``): partial fine-tuning, where eval mode keeps frozen BN statistics."""
    for node in m.index.all():
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "requires_grad_":
            if node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value is False:
                return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr == "requires_grad" for t in node.targets):
            if isinstance(node.value, ast.Constant) and node.value.value is False:
                return True
        if isinstance(node, ast.Attribute) and node.attr == "requires_grad" and isinstance(node.ctx, ast.Load):
            parent = m.parents.get(id(node))
            if isinstance(parent, (ast.Lambda, ast.comprehension)) or isinstance(m.parents.get(id(parent)), ast.comprehension):
                return True  # params filtered by requires_grad
    return False


def _leaves_loop(ctx, ev, loop) -> bool:
    """The eval is followed by ``break``/``return`` in its block: training ends there."""
    cur = ev.via[0] if ev.via else ev.node
    parents = ctx.model.parents
    while cur is not None and cur is not loop.node:
        parent = parents.get(id(cur))
        for field in ("body", "orelse", "finalbody"):
            block = getattr(parent, field, None)
            if isinstance(block, list) and any(s is cur for s in block):
                after = block[[i for i, s in enumerate(block) if s is cur][0] + 1:]
                if any(isinstance(s, (ast.Break, ast.Return, ast.Raise)) for s in after):
                    return True
        cur = parent
    return False

