"""sigmoid-before-bce-with-logits: sigmoid output fed to a loss that applies the sigmoid itself."""

from __future__ import annotations

from doctor.analysis.values import SIGMOID
from doctor.core.findings import Applicability, Severity
from doctor.lint.fixes import replace_node
from doctor.lint.rule import Rule


class SigmoidBeforeBceWithLogits(Rule):
    name = "sigmoid-before-bce-with-logits"
    code = "DR402"
    severity = Severity.ERROR
    fixable = Applicability.UNSAFE
    summary = "Sigmoid outputs are passed to BCEWithLogitsLoss / binary_cross_entropy_with_logits, which expects logits."
    why = """
        `BCEWithLogitsLoss` applies the sigmoid itself (in a numerically stable form). Fed a sigmoid output it
        computes `sigmoid(sigmoid(z))`, which only ranges over [0.5, 0.73]: predictions can never approach 0,
        the loss has a high floor and gradients all but vanish. Training runs without an error and converges
        to a poor model. Either drop the sigmoid or use `BCELoss` on probabilities (less stable).
    """
    known_problems = """
        The sigmoid must be provable: `torch.sigmoid`/`F.sigmoid`/`.sigmoid()` on the value given to
        `F.binary_cross_entropy_with_logits` or an `nn.BCEWithLogitsLoss`, traced back from the loss's input
        through assignments, helpers, model classes of this file or of the local modules the script imports (an
        `nn.Sequential` ending in `nn.Sigmoid`, a `forward` returning a sigmoid), and function parameters
        through what their callers pass. A finding that rests on an inference says so in its message; one that
        rests on a guess (a parameter no caller passes, taken to be the file's only `nn.Module` class) is a
        warning. Models from installed libraries are not read, so one whose output is already a probability is
        not seen. Sigmoid used for metrics, and `BCELoss` on probabilities, are not reported.
    """
    bad = """
        import torch
        import torch.nn.functional as F
        from torch import nn

        model = nn.Linear(20, 5)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32, 5)).float()) for _ in range(16)]

        criterion = nn.BCEWithLogitsLoss()
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(torch.sigmoid(model(x)), y)
            loss.backward()
            optimizer.step()
    """
    good = """
        import torch
        import torch.nn.functional as F
        from torch import nn

        model = nn.Linear(20, 5)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32, 5)).float()) for _ in range(16)]

        criterion = nn.BCEWithLogitsLoss()
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
    """
    fixed = """
        import torch
        import torch.nn.functional as F
        from torch import nn

        model = nn.Linear(20, 5)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32, 5)).float()) for _ in range(16)]

        criterion = nn.BCEWithLogitsLoss()
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
    """
    fix_safety = """
        The fix gives the loss the sigmoid's input instead of its output: the call itself when the sigmoid is
        written inline, or the plain name it was applied to when the output was bound to a name and that name
        still holds the same value at the loss. It is unsafe because the loss values, the gradients and the
        learning rate that suits them all change. No fix is offered when the sigmoid's input is not a plain
        name.
    """
    fires = (
        """
import torch
import torch.nn as nn
criterion = nn.BCEWithLogitsLoss()
for x, y in loader:
    logits = model(x)
    loss = criterion(torch.sigmoid(logits), y)
    loss.backward()
""",
        """
import torch
import torch.nn as nn
import torch.nn.functional as F
class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(256, 1)
    def forward(self, x):
        return torch.sigmoid(self.head(x)).squeeze(-1)
model = Detector()
for x, y in loader:
    out = model(x)
    loss = F.binary_cross_entropy_with_logits(out, y.float())
    loss.backward()
""",
    )
    silent = (
        """
import torch
import torch.nn as nn
criterion = nn.BCEWithLogitsLoss()
for x, y in loader:
    logits = model(x)
    loss = criterion(logits, y)
    preds = (torch.sigmoid(logits) > 0.5).float()
    acc = (preds == y).float().mean()
    loss.backward()
""",
        """
import torch
import torch.nn as nn
model = nn.Sequential(nn.Linear(10, 1), nn.Sigmoid())
criterion = nn.BCELoss()
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
""",
        """
import torch
import torch.nn as nn
import torch.nn.functional as F
class GatedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(64, 64)
        self.out = nn.Linear(64, 1)
    def forward(self, x):
        g = torch.sigmoid(self.gate(x))
        return self.out(g * x)
model = GatedHead()
for x, y in loader:
    loss = F.binary_cross_entropy_with_logits(model(x), y)
""",
    )

    def check(self, ctx):
        values = ctx.model.values
        for lc in values.loss_calls:
            if lc.kind != "bce_with_logits" or lc.input is None:
                continue
            act = values.activation(lc.input)
            if act is None or act.kind != SIGMOID:
                continue
            where = "" if act.program is None and act.node.lineno == lc.input.lineno else f" (sigmoid applied on {values.where(act.node, act.program)})"
            found = values.removable_activation(lc.input, act)
            fix = replace_node(ctx, found[0], ctx.segment(found[1]), "drop the sigmoid") if found else None
            yield self.finding(
                ctx,
                lc.input,
                f"`{ctx.segment(lc.input)}` is a sigmoid output{where}, but BCE-with-logits applies the sigmoid itself: "
                "pass the raw logits (or use BCELoss on probabilities)" + values.because(lc.input),
                fix=fix,
                severity=Severity.WARNING if values.rests_on_guess(lc.input) else None,
            )
