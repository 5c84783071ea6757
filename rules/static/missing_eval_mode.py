"""missing-eval-mode: a model with dropout or batch norm is evaluated in training mode."""

from __future__ import annotations

import re

from doctor.analysis.events import EVAL, FORWARD, TRAIN
from doctor.analysis.modes import iterated_key, report_node_in
from doctor.analysis.names import last_part
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

_EVAL_DATA = re.compile(r"(^|_)(val|valid|validation|test|eval|dev|holdout)(_|$|loader|set|data)", re.I)


class MissingEvalMode(Rule):
    name = "missing-eval-mode"
    code = "DR602"
    severity = Severity.WARNING
    summary = "A model with dropout or batch norm is evaluated without `model.eval()`."
    why = """
        In training mode dropout keeps zeroing activations and batch norm normalises with the statistics of
        the current batch (and keeps updating its running averages with validation data). Metrics computed
        that way are noisy and pessimistic, depend on the batch size, and the running statistics drift towards
        the validation set. `torch.no_grad()` does not change this; only `model.eval()` does.
    """
    known_problems = """
        Needs a model whose construction doctor can read in the file, with a dropout or batch-norm layer: a
        local `nn.Module` class that creates one, an `nn.Sequential` holding one, or a torchvision model known
        to use batch norm. It looks at functions named like an evaluation (`evaluate`, `validate`, `test`...)
        that switch no mode themselves and run the model over data (a one-off forward on `torch.randn` inputs is
        a smoke test), and at loops over a loader named like validation data (`val_loader`, `test_set`,
        `dev_data`...) in a function that never calls `.eval()`. Stays silent when a same-file caller calls
        `.eval()` (or `.train(False)`) before the evaluation, and when the model is put in eval mode anywhere
        outside training code (after loading weights, in a setup function): doctor cannot order those calls.
        Models built in another file are not checked.
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
            total = 0.0
            for x, y in loader:
                total += loss_fn(model(x), y).item()
            return total / len(loader)


        for epoch in range(10):
            model.train()
            for x, y in train_loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
            print(epoch, evaluate(model, val_loader))
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
            model.eval()
            total = 0.0
            for x, y in loader:
                total += loss_fn(model(x), y).item()
            return total / len(loader)


        for epoch in range(10):
            model.train()
            for x, y in train_loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
            print(epoch, evaluate(model, val_loader))
    """
    fires = (
        """
import torch
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 256)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(256, 10)
    def forward(self, x):
        return self.fc2(self.drop(self.fc1(x).relu()))
model = Net()
@torch.no_grad()
def evaluate(model, loader):
    correct = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
    return correct
""",
        """
import torch
import torch.nn as nn
model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for epoch in range(5):
    for x, y in train_loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        for x, y in val_loader:
            val_loss = criterion(model(x), y)
""",
    )
    silent = (
        """
import torch
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
model = Net()
model.load_state_dict(torch.load("weights.pt"))
model.eval()
@torch.no_grad()
def test(loader):
    for x in loader:
        print(model(x))
""",
        """
import torch
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(784, 10)
model = Net()
@torch.no_grad()
def evaluate(model, loader):
    model.eval()
    for x, y in loader:
        out = model(x)
""",
        """
import torch
from torch import nn
model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
@torch.no_grad()
def evaluate(model, loader):
    for x, y in loader:
        out = model(x)
""",
        """
import torch
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(10)
model = Net()
@torch.no_grad()
def evaluate(model, loader):
    for x, y in loader:
        out = model(x)
def main():
    model.eval()
    evaluate(model, val_loader)
""",
        """
import torch
from torch import nn
model = nn.Sequential(nn.Linear(10, 10), nn.Dropout(0.1), nn.Linear(10, 2))
@torch.no_grad()
def evaluate(model, loader, mc_samples=20):
    model.train()  # Monte-Carlo dropout: keep dropout on on purpose
    for x, y in loader:
        outs = [model(x) for _ in range(mc_samples)]
""",
    )

    def check(self, ctx):
        m = ctx.model
        modes = m.modes
        reported: set[str] = set()
        for ef in modes.eval_functions:
            if not ef.by_name or any(e.kind in (EVAL, TRAIN) for e in ef.events):
                continue
            for e in ef.forwards:
                layer = modes.mode_layer_of(e.target)
                if layer is None or e.target in reported or modes.callers_set_eval(ef.fn, e.target):
                    continue
                if modes.eval_mode_set_elsewhere(e.target):
                    continue
                reported.add(e.target)
                yield self._report(ctx, e, e.via[0] if e.via else e.node, layer, f"in `{ef.fn.name}()`")
        # A validation loop inside a training function that never switches to eval mode.
        for stream in m.streams:
            if any(e.kind == EVAL for e in stream.events):
                continue
            for e in stream.events:
                if e.kind != FORWARD or e.loop is None or e.target in reported:
                    continue
                key = iterated_key(e.loop.node)
                if not key or not _EVAL_DATA.search(last_part(key)):
                    continue
                layer = modes.mode_layer_of(e.target)
                if layer is None:
                    continue
                reported.add(e.target)
                yield self._report(ctx, e, report_node_in(e, e.loop.node), layer, f"over `{key}`")

    def _report(self, ctx, e, node, layer, where):
        return self.finding(
            ctx,
            node,
            f"`{e.target}` contains {layer} and is evaluated {where} without `{e.target}.eval()`: dropout stays "
            "on and batch norm uses (and updates) batch statistics; call `.eval()` before evaluating and "
            "`.train()` after",
        )
