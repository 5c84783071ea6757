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
    known_problems = """
        Needs an accumulation doctor recognises (see `unscaled-accumulation-loss`) and a scheduler step that
        provably runs on every micro-step. Stays silent for `ReduceLROnPlateau`, for `step()` calls given an
        argument, for custom scheduler classes, and for a scheduler known to drive another optimizer. A schedule
        deliberately defined in micro-steps (total steps counted in batches, not updates) is reported too: there
        the fix is to step it with the optimizer and count updates.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        accum_steps = 4
        scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, total_iters=100)

        for i, (x, y) in enumerate(loader):
            (loss_fn(model(x), y) / accum_steps).backward()
            if (i + 1) % accum_steps == 0:
                optimizer.step()
                optimizer.zero_grad()
            scheduler.step()
    """
    good = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        accum_steps = 4
        scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, total_iters=100)

        for i, (x, y) in enumerate(loader):
            (loss_fn(model(x), y) / accum_steps).backward()
            if (i + 1) % accum_steps == 0:
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
