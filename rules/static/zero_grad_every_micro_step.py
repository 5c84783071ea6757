"""zero-grad-every-micro-step: gradients cleared on every micro-step of an accumulation window."""

from __future__ import annotations

from doctor.analysis.events import CLEAR
from doctor.core.findings import Severity
from doctor.lint.rule import Rule


class ZeroGradEveryMicroStep(Rule):
    name = "zero-grad-every-micro-step"
    code = "DR202"
    severity = Severity.ERROR
    summary = "In a gradient-accumulation loop, gradients are cleared on every micro-step, so nothing accumulates."
    why = """
        Gradient accumulation works by letting `backward()` add up gradients over k micro-steps and stepping
        once. Calling `zero_grad()` on every micro-step throws all but the last micro-batch away: the optimizer
        steps on one micro-batch every k iterations, k times less data than intended, with no error.
    """
    known_problems = """
        Needs an accumulation doctor recognises (a step under `if (i + 1) % k == 0` or a flag named like
        `accumulate`/`should_step`, or a micro-step loop named like `micro`/`accum`/`chunk`; see
        `unscaled-accumulation-loss`) and a clear that provably runs on every micro-step and may clear the
        stepped optimizer; a clear under `if i == 0:` (or `step == 0`) runs once, before the first window, and is
        not reported. A clear between the backward and a gated step is left to `zero-grad-after-backward`.
        Clearing inside an installed library is not seen.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        accum_steps = 4

        for i, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            (loss_fn(model(x), y) / accum_steps).backward()
            if (i + 1) % accum_steps == 0:
                optimizer.step()
    """
    good = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        accum_steps = 4

        for i, (x, y) in enumerate(loader):
            (loss_fn(model(x), y) / accum_steps).backward()
            if (i + 1) % accum_steps == 0:
                optimizer.step()
                optimizer.zero_grad()
    """
    fires = (
        """
import torch
for i, (x, y) in enumerate(loader):
    optimizer.zero_grad()
    loss = criterion(model(x), y) / accum
    loss.backward()
    if (i + 1) % accum == 0:
        optimizer.step()
""",
        """
import torch
for batch in loader:
    for micro in batch.chunk(n_micro):
        optimizer.zero_grad()
        (model(micro).loss / n_micro).backward()
    optimizer.step()
""",
    )
    silent = (
        """
import torch
for i, (x, y) in enumerate(loader):
    loss = criterion(model(x), y) / accum
    loss.backward()
    if (i + 1) % accum == 0:
        optimizer.step()
        optimizer.zero_grad()
""",
        """
import torch
for i, (x, y) in enumerate(loader):
    if i % accum == 0:
        optimizer.zero_grad()
    (criterion(model(x), y) / accum).backward()
    if (i + 1) % accum == 0:
        optimizer.step()
""",
        """
from accelerate import Accelerator
accelerator = Accelerator(gradient_accumulation_steps=4)
for batch in loader:
    with accelerator.accumulate(model):
        optimizer.zero_grad()
        accelerator.backward(model(**batch).loss)
        optimizer.step()
""",
        """
import torch
for x, y in loader:
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
""",
    )

    def check(self, ctx):
        m = ctx.model
        seen = set()
        for events, stepped, acc in m.accumulations():
            s = acc.step
            for c in events:
                if c.kind != CLEAR or id(c.node) in seen or not m.clears(s.target, c, stepped):
                    continue
                if not m.runs_every_micro_step(c, acc, events):
                    continue
                if acc.guard is not None and any(b.order < c.order < s.order for b in acc.backwards):
                    continue  # cleared between backward and a gated step: zero-grad-after-backward reports it
                seen.add(id(c.node))
                yield self.finding(
                    ctx,
                    c.site(acc.backwards[0]),
                    f"`{ctx.segment(c.node)}` runs on every micro-step while `{ctx.segment(s.node)}` ({s.line_ref}) "
                    "steps once per accumulation window: only the last micro-batch's gradients survive; clear right after the step",
                )
