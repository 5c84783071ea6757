"""clip-every-micro-step: under gradient accumulation, `unscale_()` or clipping runs on every micro-step."""

from __future__ import annotations

import ast
from typing import Optional

from doctor.analysis import objects as K
from doctor.analysis.events import CLIP, STEP, UNSCALE, first_iteration_only
from doctor.core.findings import Applicability, Edit, Fix, Severity
from doctor.lint.fixes import indentation, statement_of
from doctor.lint.rule import Rule


class ClipEveryMicroStep(Rule):
    name = "clip-every-micro-step"
    code = "DR206"
    severity = Severity.ERROR
    fixable = Applicability.UNSAFE
    summary = "Under gradient accumulation, `scaler.unscale_()` or gradient clipping runs on every micro-step instead of once before the step."
    why = """
        With accumulation the gradients of one update are the sum of k micro-steps, and clipping is meant
        for that sum, once, right before `optimizer.step()`. Clipping on every micro-step clips partial sums:
        the first micro-batches are rescaled again at every later micro-step, so they weigh less than the last
        ones and the update is neither the clipped window gradient nor the plain one; nothing errors.
        With a `GradScaler`, `scaler.unscale_(optimizer)` may run once between two `scaler.update()` calls:
        the second micro-step's call raises `RuntimeError: unscale_() has already been called on this
        optimizer since the last update()` as soon as mixed precision is on (and a run without AMP hides it).
        Move both into the block that steps.
    """
    known_problems = """
        Needs an accumulation doctor recognises (see `unscaled-accumulation-loss`: a step gated by
        `(i + 1) % k == 0` or a flag named like `accumulate`/`sync_gradients`, or an inner micro-step loop)
        and an `unscale_` or a clip that provably runs on every micro-step of it, in the loop's function or in
        a helper, method or local-module function it calls. A condition shared with the step counts as a
        flush (once per window) unless it is a run-wide mode switch (`if cfg.ACCUMULATION_STEPS > 1:` around
        both); a flag such as `if cfg.CLIP_GRAD:` around the clip alone does not change anything. Clipping
        counted: torch's `clip_grad_norm_`/`clip_grad_value_` (however imported), a model's own
        `clip_grad_norm_` (FSDP) and a project function of that name; clipping by optimizer wrappers
        (fairseq, apex), DeepSpeed and Lightning is not judged. Stays silent for anything inside
        `accelerator.accumulate(...)`: Accelerate decides per iteration whether gradients sync, and an
        unguarded `accelerator.clip_grad_norm_` there is not reported (guard it with
        `if accelerator.sync_gradients:`). Clipping each micro-batch's gradient separately on purpose
        (per-example clipping as in DP-SGD) is done by other libraries and not seen here.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler()
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        accum_steps = 4

        for i, (x, y) in enumerate(loader):
            with torch.autocast("cuda"):
                loss = loss_fn(model(x), y) / accum_steps
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if (i + 1) % accum_steps == 0:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
    """
    good = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler()
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        accum_steps = 4

        for i, (x, y) in enumerate(loader):
            with torch.autocast("cuda"):
                loss = loss_fn(model(x), y) / accum_steps
            scaler.scale(loss).backward()
            if (i + 1) % accum_steps == 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
    """
    fixed = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler()
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        accum_steps = 4

        for i, (x, y) in enumerate(loader):
            with torch.autocast("cuda"):
                loss = loss_fn(model(x), y) / accum_steps
            scaler.scale(loss).backward()
            if (i + 1) % accum_steps == 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
    """
    fix_safety = """
        The fix moves the `unscale_`/clip statements of the micro-step into the block that steps, just before
        the step (the result is the good example). It is unsafe because it changes every update: clipping now
        sees the whole window's gradient, so updates differ from those of the runs made so far. It is offered
        only when those statements stand on their own lines in the micro-step loop's body, before the `if`
        that gates the step, with the step directly inside that `if`, and nothing between them reads the
        clip's result.
    """
    fires = (
        """
import torch
for step, batch in enumerate(loader):
    loss = model(**batch).loss / accum
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    if (step + 1) % accum == 0:
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
""",
        """
import torch
from torch.nn.utils import clip_grad_norm_
scaler = torch.cuda.amp.GradScaler()
class Trainer:
    def micro_step(self, batch):
        with torch.autocast("cuda"):
            loss = self.model(**batch).loss / self.accum
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        clip_grad_norm_(self.model.parameters(), 1.0)
    def fit(self, loader):
        for i, batch in enumerate(loader):
            self.micro_step(batch)
            if (i + 1) % self.accum == 0:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad()
""",
        """
import torch
for batch in loader:
    optimizer.zero_grad()
    for micro in batch.split(micro_bs):
        (model(micro).loss / n_micro).backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
    optimizer.step()
""",
    )
    silent = (
        """
import torch
for step, batch in enumerate(loader):
    loss = model(**batch).loss / accum
    loss.backward()
    if (step + 1) % accum == 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
""",
        """
import torch
for x, y in loader:
    optimizer.zero_grad()
    scaler.scale(criterion(model(x), y)).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
""",
        """
from accelerate import Accelerator
accelerator = Accelerator(gradient_accumulation_steps=4)
for batch in loader:
    with accelerator.accumulate(model):
        accelerator.backward(model(**batch).loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
""",
        """
import torch
for step, batch in enumerate(loader):
    loss = model(**batch).loss / accum
    loss.backward()
    if accelerator.sync_gradients:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    if (step + 1) % accum == 0:
        optimizer.step()
        optimizer.zero_grad()
""",
        """
import torch
for step, batch in enumerate(loader):
    loss = model(**batch).loss / accum
    loss.backward()
    grad_norm = optimizer.clip_grad_norm(max_norm)  # an optimizer wrapper (fairseq): not judged
    if (step + 1) % accum == 0:
        optimizer.step()
        optimizer.zero_grad()
""",
    )

    def check(self, ctx):
        m = ctx.model
        seen: set[int] = set()
        fixed_windows: set[int] = set()
        for events, _stepped, acc in m.accumulations():
            step = acc.step
            movable = [e for e in events if e.kind in (UNSCALE, CLIP) and _judged(m, e)]
            for ev in movable:
                if id(ev.node) in seen or not _every_micro_step(ev, acc, events):
                    continue
                seen.add(id(ev.node))
                what = ctx.segment(ev.node) if ev.program is None else f"{ev.node.func.attr if isinstance(ev.node.func, ast.Attribute) else 'clip'}() ({ev.line_ref})"
                where = (
                    f"`{ctx.segment(acc.guard.test)}`" if acc.guard is not None
                    else f"after the micro-step loop on line {acc.micro_loop.node.lineno}"
                )
                if ev.kind == UNSCALE:
                    message = (
                        f"`{what}` runs on every micro-step but `{ctx.segment(step.node) if step.program is None else 'the step'}` "
                        f"({step.line_ref}) runs once per accumulation window ({where}): the second micro-step's "
                        "`unscale_` raises `RuntimeError: unscale_() has already been called on this optimizer since the "
                        "last update()` once the scaler is enabled; unscale once, in the block that steps"
                    )
                else:
                    message = (
                        f"`{what}` clips on every micro-step but `{ctx.segment(step.node) if step.program is None else 'the step'}` "
                        f"({step.line_ref}) runs once per accumulation window ({where}): it clips partial sums, rescaling "
                        "the window's first micro-batches again at every later micro-step; clip once, right before the step"
                    )
                fix = None
                if id(step.node) not in fixed_windows:
                    fix = _fix(ctx, acc, [e for e in movable if _every_micro_step(e, acc, events)])
                    if fix is not None:
                        fixed_windows.add(id(step.node))
                yield self.finding(ctx, ev.site(step), message, fix=fix)


def _every_micro_step(ev, acc, events) -> bool:
    """``TrainingModel.runs_every_micro_step``, except that a condition selecting a mode for the whole run
    (`if cfg.ACCUMULATION_STEPS > 1:` around both the clip and the step) is not taken for a flush of the
    window: only a per-iteration condition shared with a step makes the event run once per window."""
    if ev.in_accumulate_context:
        return False
    if acc.guard is None:
        return acc.micro_loop in ev.loops and not first_iteration_only(ev, acc.micro_loop)
    if ev.loop is not acc.micro_loop or ev.accumulation_guards():
        return False
    own = [g for g in ev.guards if g.loop is acc.micro_loop and not g.mode_switch]
    if own and any(e.kind == STEP and any(e.guarded_by(g) for g in own) for e in events):
        return False
    return not any(ev.exclusive_with(b) for b in acc.backwards)


def _judged(m, ev) -> bool:
    """Unscales by a GradScaler, and clipping that torch (or a model's own `clip_grad_norm_`) does."""
    if ev.kind == UNSCALE:
        return True
    if ev.flavor == "torch":
        return True
    if ev.flavor == "other" and ev.target is None:
        return True  # a project function named like torch's
    return ev.flavor == "other" and ev.target is not None and m.objects.kind(ev.target) == K.MODEL


def _fix(ctx, acc, events) -> Optional[Fix]:
    """Move the micro-step's unscale_/clip statements into the gated block, just before the step."""
    if acc.guard is None or not events or any(e.via or e.program is not None for e in (acc.step, *events)):
        return None
    m = ctx.model
    gate = m.parents.get(id(acc.guard.test))
    step_stmt = statement_of(ctx, acc.step.node)
    if not isinstance(gate, ast.If) or acc.guard.negated or step_stmt is None or not any(s is step_stmt for s in gate.body):
        return None
    body = getattr(acc.micro_loop.node, "body", None)
    if not isinstance(body, list) or not any(s is gate for s in body):
        return None
    stmts = []
    for e in events:
        stmt = statement_of(ctx, e.node)
        if stmt is None or not any(s is stmt for s in body) or not isinstance(stmt, ast.Expr):
            return None  # nested, assigned (`norm = clip_grad_norm_(...)` may be read before the step), or elsewhere
        if stmt.lineno > gate.lineno or ctx.lines[stmt.lineno - 1].rstrip().endswith("\\"):
            return None
        if not _own_lines(ctx, stmt):
            return None
        stmts.append(stmt)
    stmts = sorted({id(s): s for s in stmts}.values(), key=lambda s: s.lineno)
    pad = indentation(ctx, step_stmt)
    nl = ctx.source.newline
    moved = []
    edits = []
    for s in stmts:
        old = indentation(ctx, s)
        for line in ctx.lines[s.lineno - 1 : s.end_lineno]:
            moved.append(pad + line[len(old):] if line.startswith(old) else pad + line.lstrip())
        edits.append(Edit(s.lineno, 0, s.end_lineno + 1, 0, ""))
    edits.append(Edit(step_stmt.lineno, 0, step_stmt.lineno, 0, nl.join(moved) + nl))
    what = " and ".join(dict.fromkeys(_call_name(s) for s in stmts))
    return Fix(f"move {what} into the block that steps", Applicability.UNSAFE, tuple(edits))


def _own_lines(ctx, stmt) -> bool:
    first = ctx.lines[stmt.lineno - 1]
    last = ctx.lines[stmt.end_lineno - 1]
    before = first[: ctx.char_column(stmt.lineno, stmt.col_offset)]
    after = last[ctx.char_column(stmt.end_lineno, stmt.end_col_offset):]
    return not before.strip() and (not after.strip() or after.strip().startswith("#"))


def _call_name(stmt) -> str:
    call = stmt.value
    func = call.func if isinstance(call, ast.Call) else None
    if isinstance(func, ast.Attribute):
        return f"`{func.attr}()`"
    if isinstance(func, ast.Name):
        return f"`{func.id}()`"
    return "the statement"
