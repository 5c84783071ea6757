"""scheduler-every-micro-step: the LR scheduler advances every micro-step while the optimizer steps every k."""

from __future__ import annotations

from doctor.analysis.events import SCHED_STEP
from doctor.core.findings import Severity
from doctor.lint.rule import Rule


class SchedulerEveryMicroStep(Rule):
    name = "scheduler-every-micro-step"
    code = "DR203"
    severity = Severity.ERROR
    summary = "In a gradient-accumulation loop, the LR scheduler steps every micro-step while the optimizer steps every k."
    why = """
        A schedule is defined in optimizer updates (warm-up steps, total steps). Stepping it on every
        micro-step runs it k times too fast: warm-up ends after 1/k of the intended updates and a cosine or
        linear decay reaches zero at 1/k of training, after which the model stops learning.
    """
    bad = """
        for i, batch in enumerate(loader):
            (model(**batch).loss / k).backward()
            if (i + 1) % k == 0:
                optimizer.step()
                optimizer.zero_grad()
            scheduler.step()
    """
    good = """
        for i, batch in enumerate(loader):
            (model(**batch).loss / k).backward()
            if (i + 1) % k == 0:
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
    """
    fires = (
        """
import torch
for i, batch in enumerate(loader):
    loss = model(**batch).loss / accum
    loss.backward()
    if (i + 1) % accum == 0:
        optimizer.step()
        optimizer.zero_grad()
    lr_scheduler.step()
""",
    )
    silent = (
        """
import torch
for i, batch in enumerate(loader):
    loss = model(**batch).loss / accum
    loss.backward()
    if (i + 1) % accum == 0:
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
""",
        """
from accelerate import Accelerator
accelerator = Accelerator(gradient_accumulation_steps=4)
for batch in loader:
    with accelerator.accumulate(model):
        accelerator.backward(model(**batch).loss)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
""",
        """
import torch
for epoch in range(epochs):
    for i, batch in enumerate(loader):
        (model(**batch).loss / accum).backward()
        if (i + 1) % accum == 0:
            optimizer.step()
            optimizer.zero_grad()
    scheduler.step()
""",
    )

    def check(self, ctx):
        m = ctx.model
        seen = set()
        for events, stepped, acc in m.accumulations():
            s = acc.step
            for k in events:
                if k.kind != SCHED_STEP or id(k.node) in seen or m.is_plateau(k):
                    continue
                if not m.scheduler_drives(k.target, s.target, stepped, at=k.node) or not m.runs_every_micro_step(k, acc, events):
                    continue
                seen.add(id(k.node))
                yield self.finding(
                    ctx,
                    k.site(s),
                    f"`{ctx.segment(k.node)}` advances on every micro-step but `{ctx.segment(s.node)}` ({s.line_ref}) "
                    "steps once per accumulation window: the schedule runs k times too fast; step it with the optimizer",
                )
