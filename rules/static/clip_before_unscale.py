"""clip-before-unscale: with a GradScaler, gradients are clipped while they are still scaled."""

from __future__ import annotations

import ast
import re
from typing import Optional

from doctor.analysis import objects as K
from doctor.analysis.events import BACKWARD, CLIP, STEP, UNSCALE
from doctor.analysis.modes import report_node
from doctor.analysis.names import receiver_key
from doctor.core.findings import Applicability, Severity
from doctor.lint.fixes import insert_before, statement_of
from doctor.lint.rule import Rule


class ClipBeforeUnscale(Rule):
    name = "clip-before-unscale"
    code = "DR106"
    severity = Severity.ERROR
    fixable = Applicability.UNSAFE
    summary = "Gradients are clipped after `scaler.scale(loss).backward()` without `scaler.unscale_(optimizer)` first."
    why = """
        With AMP the gradients after `scaler.scale(loss).backward()` are multiplied by the loss scale
        (65536 at the start). Clipping them to `max_norm=1.0` at that point clips to 1/65536 of the intended
        norm, so almost every step is crushed to a tiny update (or, as the scale changes, the clip threshold
        drifts). Call `scaler.unscale_(optimizer)` before clipping; `scaler.step` then knows not to unscale twice.
    """
    known_problems = """
        Reported only when the backward pass is provably scaled: `scaler.scale(loss).backward()` (or a name
        assigned from `scaler.scale(...)`) where `scaler` is a `GradScaler` built in the file. Stays silent when
        an `unscale_` runs between the backward and the clip, when the clip is guarded by a precision flag the
        backward is not (`if not use_amp: clip...`), when a step comes between them, and for clipping done by
        Accelerate, Lightning or optimizer wrappers (they unscale themselves). torch's
        `clip_grad_norm_`/`clip_grad_value_` and a model's own `clip_grad_norm_` (FSDP) are checked.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler()
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            with torch.autocast("cuda"):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
    """
    good = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler()
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            with torch.autocast("cuda"):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
    """
    fixed = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler()
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            with torch.autocast("cuda"):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
    """
    fix_safety = """
        The fix inserts `scaler.unscale_(optimizer)` before the clip, naming the optimizer that
        `scaler.step(...)` steps later. It is unsafe because it changes every update: the clip threshold starts
        meaning what it says, so steps become much larger than in the runs made so far. It is offered only when
        the backward, the clip and `scaler.step(optimizer)` are in the same function; with several optimizers
        sharing one scaler, each needs its own `unscale_`, which the fix does not add.
    """
    fires = (
        """
import torch
scaler = torch.cuda.amp.GradScaler()
optimizer = torch.optim.AdamW(model.parameters())
for x, y in loader:
    optimizer.zero_grad()
    with torch.autocast("cuda"):
        loss = criterion(model(x), y)
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
""",
        """
import torch
from torch import nn
def train(model, loader, optimizer, grad_scaler):
    for batch in loader:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(**batch).loss
        scaled = grad_scaler.scale(loss)
        scaled.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        grad_scaler.step(optimizer)
        grad_scaler.update()
""",
    )
    silent = (
        """
import torch
for batch in loader:
    optimizer.zero_grad()
    with torch.autocast("cuda"):
        loss = model(batch)
    scaler.scale(loss).backward()
    grad_norm = optimizer.clip_grad_norm(max_norm)  # the FP16 optimizer wrapper unscales inside
    scaler.step(optimizer)
    scaler.update()
""",
        """
import torch
scaler = torch.cuda.amp.GradScaler(enabled=use_amp)
for x, y in loader:
    optimizer.zero_grad()
    with torch.autocast("cuda", enabled=use_amp):
        loss = criterion(model(x), y)
    scaler.scale(loss).backward()
    if not use_amp:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
""",
        """
import torch
scaler = torch.cuda.amp.GradScaler()
for x, y in loader:
    optimizer.zero_grad()
    with torch.autocast("cuda"):
        loss = criterion(model(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
""",
        """
from accelerate import Accelerator
accelerator = Accelerator(mixed_precision="fp16")
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
for batch in loader:
    loss = model(**batch).loss
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
""",
        """
import torch
scaler = torch.cuda.amp.GradScaler()
for x, y in loader:
    optimizer.zero_grad()
    if use_amp:
        scaler.scale(criterion(model(x), y)).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        criterion(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
""",
        """
import torch
class Trainer:
    def optimizer_step(self):
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
    def fit(self, loader):
        for batch in loader:
            self.optimizer.zero_grad()
            loss = self.model(batch)
            self.scaler.scale(loss).backward()
            self.optimizer_step()
""",
    )

    def check(self, ctx):
        m = ctx.model
        seen: set[int] = set()
        for stream in m.streams:
            events = stream.events
            for clip in events:
                if clip.kind != CLIP or id(clip.node) in seen or not _clips_raw_grads(m, clip):
                    continue
                back = _scaled_backward_before(m, clip, events)
                if back is None or _amp_guarded(clip, back):
                    continue
                if any(
                    e.kind == UNSCALE and back.order < e.order < clip.order and not e.exclusive_with(clip) for e in events
                ):
                    continue
                node = report_node(clip, back)
                if id(node) in seen:
                    continue
                seen.add(id(node))
                scaler = _scaler_of(m, back)
                step = next(
                    (e for e in events if e.kind == STEP and e.flavor == "scaler" and e.order > clip.order and not e.exclusive_with(clip)),
                    None,
                )
                opt = ctx.segment(step.node.args[0]) if step is not None and step.node.args and step.via == clip.via else "optimizer"
                yield self.finding(
                    ctx,
                    node,
                    f"`{ctx.segment(clip.node)}` clips gradients that are still multiplied by the loss scale of "
                    f"`{scaler or 'the GradScaler'}` (backward on {back.line_ref}); call "
                    f"`{scaler or 'scaler'}.unscale_({opt})` before clipping",
                    fix=_fix(ctx, clip, back, step, scaler),
                )


_AMP_WORDS = re.compile(r"amp|fp16|float16|half|scal|mixed|precision", re.I)


def _amp_guarded(clip, back) -> bool:
    """``if not use_amp: clip(...)`` after an unconditional scaled backward: the author decides per precision
    mode, and a disabled scaler does not scale. (A clip inside the same ``if use_amp:`` block as the backward
    is still reported.)"""
    return any(_AMP_WORDS.search(ast.unparse(g.test)) for g in clip.guards if not back.guarded_by(g))


def _clips_raw_grads(m, clip) -> bool:
    """torch's clip functions and FSDP's ``model.clip_grad_norm_``; not Accelerate/Lightning/optimizer wrappers."""
    if clip.flavor == "torch":
        return True
    if clip.flavor == "other" and clip.target and m.objects.kind(clip.target) == K.MODEL:
        return True
    return clip.flavor == "other" and clip.target is None


def _scaled_backward_before(m, clip, events):
    for e in reversed([e for e in events if e.order < clip.order]):
        if e.kind == STEP:
            return None  # an earlier step ends the previous update
        if e.kind == BACKWARD and not e.exclusive_with(clip) and _scaler_of(m, e):
            return e
    return None


def _scaler_of(m, back) -> Optional[str]:
    """``scaler.scale(loss).backward()`` or ``scaled = scaler.scale(loss); scaled.backward()``: the scaler's key."""
    arg = back.arg
    if isinstance(arg, ast.Name):
        fn = m.enclosing_function(back.node)
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == arg.id for t in node.targets):
                if node.lineno < back.node.lineno and _is_scale_call(m, node.value):
                    return receiver_key(node.value.func.value)  # type: ignore[attr-defined]
        return None
    if _is_scale_call(m, arg):
        return receiver_key(arg.func.value)  # type: ignore[union-attr]
    return None


def _is_scale_call(m, expr) -> bool:
    return (
        isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr == "scale"
        and bool(expr.args) and m.objects.kind(receiver_key(expr.func.value)) == K.SCALER
    )


def _fix(ctx, clip, back, step, scaler):
    if step is None or not (clip.via == back.via == step.via) or not scaler or "[]" in scaler or not step.node.args:
        return None
    stmt = statement_of(ctx, clip.node)
    if stmt is None:
        return None
    opt = ctx.segment(step.node.args[0])
    return insert_before(ctx, stmt, f"{scaler}.unscale_({opt})", f"unscale the gradients with `{scaler}.unscale_({opt})` before clipping")
