"""clip-after-step: gradients are clipped after the optimizer already stepped on them."""

from __future__ import annotations

import ast

from doctor.analysis.events import BACKWARD, CLEAR, CLIP, STEP
from doctor.analysis.modes import report_node
from doctor.core.findings import Severity
from doctor.lint.rule import Rule


class ClipAfterStep(Rule):
    name = "clip-after-step"
    code = "DR105"
    severity = Severity.ERROR
    summary = "Gradients are clipped after `optimizer.step()` in the same iteration, where clipping changes nothing."
    why = """
        `clip_grad_norm_` rescales `.grad` in place; only a later `step()` sees the result. Clipping after the
        step (and before the next `backward()` or `zero_grad()`) clips gradients that are about to be thrown
        away, so training runs unclipped: the exploding-gradient protection you configured is silently off,
        and the returned norm you log looks fine.
    """
    known_problems = """
        Stays silent when a later `step()` or `backward()` in the same iteration may still use the clipped
        gradients, when nothing in the iteration clears the gradients (they then carry over to the next step, so
        the clip is not clearly wasted), when the clip only measures the norm (`max_norm=float("inf")` or a huge
        literal, as used for logging), and when no backward pass precedes the step in the loop doctor reads. The
        clip and the step must be in the same loop of one function (readable helpers from this file and local
        modules inlined).
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
            loss_fn(model(x), y).backward()
            optimizer.step()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
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
            loss_fn(model(x), y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    """
    fires = (
        """
import torch
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for x, y in loader:
    optimizer.zero_grad()
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
""",
        """
import torch
from torch.nn.utils import clip_grad_norm_
def train_epoch(model, loader, optimizer, scaler):
    for batch in loader:
        with torch.autocast("cuda"):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scaler.unscale_(optimizer)
        clip_grad_norm_(model.parameters(), 1.0)
        optimizer.zero_grad()
""",
    )
    silent = (
        """
import math
import torch
for x, y in loader:
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=math.inf)
    log(grad_norm)
""",
        """
import torch
for x, y in loader:
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
""",
        """
import torch
opt_d = torch.optim.Adam(netD.parameters())
opt_g = torch.optim.Adam(netG.parameters())
for real in loader:
    opt_d.zero_grad(); opt_g.zero_grad()
    d_loss(real).backward()
    g_loss(real).backward()
    opt_d.step()
    torch.nn.utils.clip_grad_norm_(netG.parameters(), 1.0)
    opt_g.step()
""",
        """
import torch
for i, (x, y) in enumerate(loader):
    criterion(model(x), y).backward()
    if (i + 1) % accum == 0:
        optimizer.step()
        optimizer.zero_grad()
    if (i + 1) % accum == accum - 1:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
""",
        """
import torch
for x, y in loader:
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    else:
        optimizer.step()
""",
    )

    def check(self, ctx):
        m = ctx.model
        seen: set[int] = set()
        for stream in m.streams:
            events = stream.events
            for clip in events:
                if clip.kind != CLIP or id(clip.node) in seen:
                    continue
                step = _step_before(clip, events)
                if step is None or _measures_only(clip.node):
                    continue
                scope = [e for e in events if step.loop is None or step.loop in e.loops]
                if not any(e.kind == BACKWARD and e.order < step.order for e in scope):
                    continue  # not a training iteration we can read
                if any(e.kind in (STEP, BACKWARD) and e.order > clip.order and not e.exclusive_with(clip) for e in scope):
                    continue  # a later step in this iteration may use the clipped gradients
                if not any(e.kind == CLEAR and not e.exclusive_with(clip) for e in scope):
                    continue  # gradients carry over to the next iteration: the clip is not clearly wasted
                node = report_node(clip, step)
                if id(node) in seen:
                    continue
                seen.add(id(node))
                yield self.finding(
                    ctx,
                    node,
                    f"`{ctx.segment(clip.node)}` runs after `{ctx.segment(step.node)}` ({step.line_ref}): the "
                    "step already used the unclipped gradients, so clipping changes nothing; clip before the step",
                )


def _measures_only(call) -> bool:
    """``clip_grad_norm_(params, float("inf"))`` computes the norm for logging; it clips nothing."""
    for arg in list(call.args[1:]) + [kw.value for kw in call.keywords if kw.arg in ("max_norm", "clip_value")]:
        text = ast.unparse(arg)
        if "inf" in text.lower() or "1e9" in text or "1e10" in text:
            return True
    return False


def _step_before(clip, events):
    """The last optimizer step before ``clip`` in the same iteration, with no backward in between."""
    found = None
    for e in events:
        if e.order >= clip.order:
            break
        if e.kind == BACKWARD:
            found = None
        elif e.kind == STEP and e.loop is clip.loop and not e.exclusive_with(clip):
            if all(any(g is h for h in clip.guards) for g in e.guards):
                found = e
    return found
