"""softmax-before-cross-entropy: probabilities fed to a loss that applies log_softmax itself."""

from __future__ import annotations

from doctor.analysis.values import SOFTMAX
from doctor.core.findings import Applicability, Severity
from doctor.lint.fixes import replace_node
from doctor.lint.rule import Rule


class SoftmaxBeforeCrossEntropy(Rule):
    name = "softmax-before-cross-entropy"
    code = "DR401"
    severity = Severity.ERROR
    fixable = Applicability.UNSAFE
    summary = "Softmax probabilities are passed to CrossEntropyLoss / F.cross_entropy, which expects raw logits."
    why = """
        `nn.CrossEntropyLoss` and `F.cross_entropy` apply `log_softmax` to their input themselves. Given
        probabilities they compute `log_softmax(softmax(z))`: the inputs are squeezed into [0, 1], so the loss
        can never get near zero, its gradients shrink as the model becomes confident, and training stalls at a
        worse accuracy than the same model trained on logits. Nothing errors: the loss just decreases slowly.
        Softmax on the *target* side (soft labels, distillation targets) is correct.
    """
    known_problems = """
        The softmax must be provable: a call of `softmax` (torch, `F`, a tensor method) on the value given to
        `F.cross_entropy`/`nn.CrossEntropyLoss`, traced back from the loss's input through assignments, helpers,
        model classes of this file or of the local modules the script imports (an `nn.Sequential` ending in
        `nn.Softmax`, a `forward` returning a softmax), and function parameters through what their callers pass.
        A finding that rests on an inference says so in its message; one that rests on a guess (a parameter no
        caller passes, taken to be the file's only `nn.Module` class) is a warning. Models from installed
        libraries are not read, so one whose output is already a probability is not seen. `log_softmax` outputs,
        softmax on the target argument (soft labels, distillation targets), and a softmax computed only for
        metrics are not reported.
    """
    bad = """
        import torch
        import torch.nn.functional as F
        from torch import nn

        model = nn.Linear(20, 5)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 5, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            logits = model(x)
            probs = F.softmax(logits, dim=1)
            loss = F.cross_entropy(probs, y)
            loss.backward()
            optimizer.step()
    """
    good = """
        import torch
        import torch.nn.functional as F
        from torch import nn

        model = nn.Linear(20, 5)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 5, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
    """
    fixed = """
        import torch
        import torch.nn.functional as F
        from torch import nn

        model = nn.Linear(20, 5)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 5, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            logits = model(x)
            probs = F.softmax(logits, dim=1)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
    """
    fix_safety = """
        The fix gives the loss the softmax's input instead of its output: the call itself when the softmax is
        written inline (`F.cross_entropy(F.softmax(z, dim=1), y)` becomes `F.cross_entropy(z, y)`), or, when the
        probabilities were bound to a name, the plain name the softmax was applied to, if it still holds the
        same value at the loss. The probabilities stay available for metrics. It is unsafe because the loss
        values, the gradients and the learning rate that suits them all change. No fix is offered when the
        softmax's input is not a plain name (`probs = F.softmax(model(x), dim=1)`): that would mean running the
        model again.
    """
    fires = (
        """
import torch.nn.functional as F
for x, y in loader:
    logits = model(x)
    loss = F.cross_entropy(F.softmax(logits, dim=1), y)
    loss.backward()
""",
        """
import torch
import torch.nn as nn
class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10), nn.Softmax(dim=1))
    def forward(self, x):
        return self.net(x)
model = Classifier()
criterion = nn.CrossEntropyLoss()
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
""",
        """
import torch
import torch.nn.functional as F
def train(model, loader):
    for x, y in loader:
        probs = torch.softmax(model(x), dim=-1)
        loss = F.cross_entropy(probs, y)
        loss.backward()
""",
    )
    silent = (
        """
import torch.nn.functional as F
for x, y in loader:
    logits = model(x)
    probs = F.softmax(logits, dim=-1)
    acc = (probs.argmax(-1) == y).float().mean()
    loss = F.cross_entropy(logits, y)
    loss.backward()
""",
        """
import torch.nn.functional as F
for x, _ in loader:
    with torch.no_grad():
        soft_targets = F.softmax(teacher(x) / T, dim=-1)
    loss = F.cross_entropy(student(x), soft_targets)
    loss.backward()
""",
        """
import torch.nn as nn
import torch.nn.functional as F
class Attention(nn.Module):
    def forward(self, q, k, v):
        weights = F.softmax(q @ k.transpose(-2, -1), dim=-1)
        return weights @ v
criterion = nn.CrossEntropyLoss()
for x, y in loader:
    loss = criterion(model(x), y)
""",
        """
import torch.nn.functional as F
for x, y in loader:
    out = model(x)
    if args.use_probs:
        out = F.softmax(out, dim=1)
    loss = F.cross_entropy(out, y)
""",
    )

    def check(self, ctx):
        values = ctx.model.values
        for lc in values.loss_calls:
            if lc.kind != "cross_entropy" or lc.input is None:
                continue
            act = values.activation(lc.input)
            if act is None or act.kind != SOFTMAX:
                continue
            where = "" if act.program is None and act.node.lineno == lc.input.lineno else f" (softmax applied on {values.where(act.node, act.program)})"
            yield self.finding(
                ctx,
                lc.input,
                f"`{ctx.segment(lc.input)}` holds softmax probabilities{where}, but cross-entropy applies log_softmax "
                "itself: pass the raw logits" + values.because(lc.input),
                fix=_fix(ctx, values, lc.input, act),
                severity=Severity.WARNING if values.rests_on_guess(lc.input) else None,
            )


def _fix(ctx, values, expr, act):
    found = values.removable_activation(expr, act)
    if found is None:
        return None
    node, replacement = found
    return replace_node(ctx, node, ctx.segment(replacement), "pass the logits instead of the softmax output")
