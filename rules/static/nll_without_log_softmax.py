"""nll-without-log-softmax: NLLLoss fed raw logits or probabilities instead of log-probabilities."""

from __future__ import annotations

from doctor.analysis.values import LINEAR, SOFTMAX
from doctor.core.findings import Severity
from doctor.lint.rule import Rule


class NllWithoutLogSoftmax(Rule):
    name = "nll-without-log-softmax"
    code = "DR403"
    severity = Severity.ERROR
    summary = "NLLLoss / F.nll_loss is given raw logits (a Linear output) or softmax probabilities, not log-probabilities."
    why = """
        `NLLLoss` does no normalisation: it returns minus the input at the target index. On raw logits the loss
        is unbounded below, so the model learns to blow the target logit up instead of classifying; on softmax
        probabilities the loss is minus a probability, with tiny gradients. Both train without an error. Put a
        `log_softmax` in front (or use `CrossEntropyLoss` on the logits).
    """
    known_problems = """
        Reported only when the input of `F.nll_loss`/`nn.NLLLoss` provably ends in an `nn.Linear` (a Linear
        module, a Sequential whose last layer is Linear, a module class of this file or of a local module the
        script imports whose `forward` returns a Linear's output) or in a softmax, traced through assignments,
        helpers and what callers pass for a parameter; a finding resting on a guess (a parameter no caller
        passes, taken to be the file's only `nn.Module` class) is a warning. An input whose origin is unknown (a
        model from an installed library) is not reported, and neither is one that ends in `log_softmax` or
        `log(softmax(...))`.
    """
    bad = """
        import torch
        import torch.nn.functional as F
        from torch import nn

        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 5, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            loss = F.nll_loss(model(x), y)
            loss.backward()
            optimizer.step()
    """
    good = """
        import torch
        import torch.nn.functional as F
        from torch import nn

        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5), nn.LogSoftmax(dim=1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(32, 20), torch.randint(0, 5, (32,))) for _ in range(16)]

        for x, y in loader:
            optimizer.zero_grad()
            loss = F.nll_loss(model(x), y)
            loss.backward()
            optimizer.step()
    """
    fires = (
        """
import torch.nn as nn
import torch.nn.functional as F
model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
for x, y in loader:
    loss = F.nll_loss(model(x), y)
    loss.backward()
""",
        """
import torch.nn as nn
import torch.nn.functional as F
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 128)
        self.fc2 = nn.Linear(128, 10)
    def forward(self, x):
        x = F.relu(self.fc1(x))
        return F.softmax(self.fc2(x), dim=1)
model = Net()
criterion = nn.NLLLoss()
for x, y in loader:
    loss = criterion(model(x), y)
""",
    )
    silent = (
        """
import torch.nn as nn
import torch.nn.functional as F
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)
    def forward(self, x):
        return F.log_softmax(self.fc(x), dim=1)
model = Net()
for x, y in loader:
    loss = F.nll_loss(model(x), y)
""",
        """
import torch
import torch.nn.functional as F
for x, y in loader:
    probs = F.softmax(model(x), dim=1)
    loss = F.nll_loss(torch.log(probs + 1e-8), y)
""",
        """
import torch.nn.functional as F
def train(model, loader):
    for x, y in loader:
        loss = F.nll_loss(model(x), y)
""",
    )

    def check(self, ctx):
        values = ctx.model.values
        for lc in values.loss_calls:
            if lc.kind != "nll" or lc.input is None:
                continue
            act = values.activation(lc.input)
            if act is None or act.kind not in (LINEAR, SOFTMAX):
                continue
            what = "raw logits of a Linear layer" if act.kind == LINEAR else "softmax probabilities"
            yield self.finding(
                ctx,
                lc.input,
                f"`{ctx.segment(lc.input)}` holds {what} ({values.where(act.node, act.program)}), but NLL loss expects "
                "log-probabilities: apply log_softmax first, or use cross-entropy on the logits" + values.because(lc.input),
                severity=Severity.WARNING if values.rests_on_guess(lc.input) else None,
            )
