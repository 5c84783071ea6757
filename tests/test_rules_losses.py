"""Targeted tests for the loss, autograd and optimizer rules (DR4xx, DR5xx, DR80x) and value provenance.

The rules' own `fires`/`silent` examples are tested generically (test_rule_examples.py); here: fix texts
(applied locally and re-checked for idempotence), the SAFE fix through the CLI, and look-alikes that must
stay silent.
"""

from __future__ import annotations

import ast
import shutil
import textwrap

import pytest

from doctor.analysis.model import TrainingModel
from doctor.core.findings import Applicability, Edit, Finding
from doctor.lint.registry import lookup
from doctor.lint.testing import check_snippet


def findings(code: str, rule: str) -> list[Finding]:
    return [f for f in check_snippet(code, [lookup(rule)]) if f.rule == lookup(rule).name]


def apply_edits(text: str, edits: tuple[Edit, ...]) -> str:
    """Apply edits (1-based lines, 0-based character columns, end exclusive), last first."""
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(line: int, col: int) -> int:
        return starts[line - 1] + col

    out = text
    for e in sorted(edits, key=lambda e: (e.line, e.column), reverse=True):
        out = out[: offset(e.line, e.column)] + e.replacement + out[offset(e.end_line, e.end_column) :]
    return out


def fixed(code: str, rule: str) -> tuple[str, Finding]:
    code = textwrap.dedent(code)
    found = findings(code, rule)
    assert len(found) == 1, [(f.line, f.message) for f in found]
    assert found[0].fix is not None, found[0].message
    out = apply_edits(code, found[0].fix.edits)
    ast.parse(out)
    assert not findings(out, rule), f"fix is not idempotent:\n{out}"
    return out, found[0]


# -- fixes ----------------------------------------------------------------------------------------------


def test_running_total_fix_is_safe_and_detaches_the_added_value():
    out, f = fixed(
        """
        import torch
        total_loss = 0
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            total_loss += loss
        """,
        "loss-accumulated-as-tensor",
    )
    assert f.fix.applicability is Applicability.SAFE
    assert "    total_loss += loss.detach()\n" in out


def test_running_total_fix_parenthesises_compound_values():
    out, _ = fixed(
        """
        import torch
        running = 0.0
        for x, y in loader:
            loss = criterion(model(x), y)
            scaler.scale(loss).backward()
            running = running + loss * x.size(0)
        """,
        "loss-accumulated-as-tensor",
    )
    assert "running = running + (loss * x.size(0)).detach()" in out


def test_softmax_fix_unwraps_inline_call_and_name():
    out, f = fixed(
        """
        import torch.nn.functional as F
        for x, y in loader:
            logits = model(x)
            loss = F.cross_entropy(F.softmax(logits, dim=1), y)
            loss.backward()
        """,
        "softmax-before-cross-entropy",
    )
    assert f.fix.applicability is Applicability.UNSAFE
    assert "F.cross_entropy(logits, y)" in out
    out, _ = fixed(
        """
        import torch.nn.functional as F
        def step(model, x, y):
            logits = model(x)
            probs = logits.softmax(-1)
            return F.cross_entropy(probs, y)
        """,
        "softmax-before-cross-entropy",
    )
    assert "F.cross_entropy(logits, y)" in out and "probs = logits.softmax(-1)" in out


def test_softmax_fix_is_not_offered_when_the_logits_were_rebound():
    code = """
import torch.nn.functional as F
for x, y in loader:
    logits = model(x)
    probs = F.softmax(logits, dim=1)
    logits = logits * 2
    loss = F.cross_entropy(probs, y)
"""
    (f,) = findings(code, "softmax-before-cross-entropy")
    assert f.fix is None


def test_sigmoid_fix_drops_the_sigmoid():
    out, _ = fixed(
        """
        import torch
        import torch.nn as nn
        criterion = nn.BCEWithLogitsLoss()
        for x, y in loader:
            logits = model(x)
            loss = criterion(logits.sigmoid(), y)
        """,
        "sigmoid-before-bce-with-logits",
    )
    assert "criterion(logits, y)" in out


def test_dropout_fix_adds_training_flag_after_the_last_argument():
    out, _ = fixed(
        """
        import torch.nn as nn
        import torch.nn.functional as F
        class Net(nn.Module):
            def forward(self, x):
                return F.dropout(
                    x,
                    p=0.3,
                )
        """,
        "functional-dropout-always-on",
    )
    assert "p=0.3, training=self.training," in out


def test_direct_forward_fix_calls_the_module():
    out, _ = fixed(
        """
        import torch
        model = torch.nn.Linear(4, 2)
        y = model.forward(torch.ones(4))
        """,
        "direct-forward-call",
    )
    assert "y = model(torch.ones(4))" in out


def test_safe_fix_through_the_cli_keeps_crlf_and_is_idempotent(tmp_path, run_doctor):
    path = tmp_path / "train.py"
    path.write_bytes(
        b"import torch\r\ntotal = 0\r\nfor x, y in loader:\r\n    loss = crit(model(x), y)\r\n"
        b"    loss.backward()\r\n    opt.step()\r\n    total += loss\r\n"
    )
    first = run_doctor("check", str(path), "--select", "DR501", "--fix", "--no-cache")
    assert first.returncode == 0, first.stdout + first.stderr
    assert path.read_bytes().endswith(b"    total += loss.detach()\r\n")
    again = run_doctor("check", str(path), "--select", "DR501", "--no-cache")
    assert again.returncode == 0 and "DR501" not in again.stdout


# -- look-alikes that must stay silent ------------------------------------------------------------------

SILENT = {
    "softmax-before-cross-entropy": [
        # softmax inside the model (attention) but a Linear output layer
        """
import torch.nn as nn
import torch.nn.functional as F
class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.out = nn.Linear(8, 4)
    def forward(self, x):
        w = F.softmax(self.q(x) @ x.transpose(1, 2), dim=-1)
        return self.out(w @ x)
model = Attn()
loss = F.cross_entropy(model(x), y)
""",
        # log of the probabilities: log-softmax, which cross-entropy leaves unchanged
        """
import torch
import torch.nn.functional as F
p = F.softmax(model(x), 1)
loss = F.cross_entropy(torch.log(p), y)
""",
        # probabilities only for logging, raw logits to the loss
        """
import torch.nn.functional as F
for x, y in loader:
    logits = model(x)
    probs = F.softmax(logits, -1)
    log("conf", probs.max(-1).values.mean())
    loss = F.cross_entropy(logits, y)
""",
        # forward returns logits in training and probabilities in eval: not provably softmax
        """
import torch.nn as nn
import torch.nn.functional as F
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
    def forward(self, x):
        if self.training:
            return self.fc(x)
        return F.softmax(self.fc(x), -1)
model = Net()
loss = nn.CrossEntropyLoss()(model(x), y)
""",
        # softmax used for a Categorical policy, log-probs to the loss
        """
import torch
import torch.nn.functional as F
from torch.distributions import Categorical
for obs in env_steps:
    probs = F.softmax(policy(obs), -1)
    dist = Categorical(probs)
    a = dist.sample()
    loss = -(dist.log_prob(a) * ret).mean() + F.cross_entropy(policy(obs), a)
""",
        # a tuple-returning model: the loss gets the logits element
        """
import torch.nn as nn
import torch.nn.functional as F
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
    def forward(self, x):
        logits = self.fc(x)
        return logits, F.softmax(logits, -1)
model = Net()
logits, probs = model(x)
loss = F.cross_entropy(logits, y)
""",
    ],
    "detached-loss-input": [
        # a comprehension variable that shadows a detached outer name
        """
import torch
import torch.nn.functional as F
out = model(x).detach()
for batch in loader:
    loss = sum(F.mse_loss(out, t) for out, t in zip(model(batch.x), batch.targets))
    loss.backward()
""",
        # a detached term summed with a term that trains the model
        """
import torch
import torch.nn.functional as F
for x, y in loader:
    out = model(x)
    loss = F.mse_loss(out.detach(), y) + 0.01 * F.mse_loss(out, torch.zeros_like(out))
    loss.backward()
""",
        # validation under no_grad: not backpropagated
        """
import torch
with torch.no_grad():
    for x, y in val_loader:
        output = model(x)
        val_loss = criterion(output.detach(), y)
""",
        # a frozen backbone: the detach is inside the trained head's input
        """
import torch
for x, y in loader:
    feats = backbone(x).detach()
    loss = criterion(head(feats), y)
    loss.backward()
""",
    ],
    "loss-accumulated-as-tensor": [
        # `loss` is a float on the other branch: `.detach()` would crash, and nothing is attached there
        """
import torch
total = 0
for x, y in loader:
    if train_this_step:
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
    else:
        loss = 0.0
    total += loss
""",
        # rebound to a number after the backward
        """
import torch
total = 0
for x, y in loader:
    loss = crit(model(x), y)
    loss.backward()
    loss = loss.item()
    total += loss
""",
        # micro-step losses of one accumulation window, reset every optimizer step
        """
import torch
for batch in loader:
    total = 0
    for micro in batch.chunks:
        l = crit(model(micro.x), micro.y)
        l.backward()
        total += l
    opt.step()
""",
        # multi-task total reset each iteration and backpropagated
        """
import torch
for batch in loader:
    total = 0
    for name, head in heads.items():
        total = total + head_loss(head, batch)
    total.backward()
    optimizer.step()
""",
        # an evaluation loop (no backward in it)
        """
import torch
def evaluate(model, loader):
    total = 0
    for x, y in loader:
        total += criterion(model(x), y)
    return total / len(loader)
""",
    ],
    "backward-in-no-grad": [
        # saliency maps: backward under enable_grad inside a no_grad evaluation function
        """
import torch
@torch.no_grad()
def saliency(model, x):
    with torch.enable_grad():
        x.requires_grad_(True)
        out = model(x)
        out.sum().backward()
    return x.grad
""",
        # features computed under inference_mode, the trained head outside it
        """
import torch
with torch.inference_mode():
    feats = backbone(x)
loss = crit(head(feats.clone()), y)
loss.backward()
""",
        # EMA update under no_grad after the backward
        """
import torch
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for p, q in zip(ema.parameters(), model.parameters()):
            p.mul_(0.999).add_(q, alpha=0.001)
""",
    ],
    "retain-graph-in-loop": [
        # retain_graph computed from a variable: the author decides per pass
        """
import torch
for i, (x, y) in enumerate(loader):
    loss = criterion(model(x), y)
    loss.backward(retain_graph=i < n_passes - 1)
""",
    ],
    "non-leaf-parameter": [
        # moved but never optimized nor read for .grad
        """
import torch
noise = torch.randn(4, requires_grad=True).to(device)
out = model(noise)
""",
    ],
    "direct-forward-call": [
        # a hook-free wrapper inside an imported-base class
        """
import torch
from transformers import PreTrainedModel
class Wrapper(PreTrainedModel):
    def forward(self, x):
        return self.inner.forward(x)
""",
    ],
    "lr-out-of-range": [
        # a third-party scheduler may set the LR itself
        """
import torch
from timm.scheduler import CosineLRScheduler
opt = torch.optim.Adam(model.parameters(), lr=0.5)
sched = CosineLRScheduler(opt, t_initial=100)
""",
        # OneCycleLR replaces the base LR
        """
import torch
optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=1000)
""",
    ],
}


@pytest.mark.parametrize(
    "rule,code", [(r, c) for r, codes in SILENT.items() for c in codes], ids=lambda v: v if isinstance(v, str) and "\n" not in v else None
)
def test_lookalikes_stay_silent(rule, code):
    assert not findings(code, rule), [(f.line, f.message) for f in findings(code, rule)]


# -- more real-world firing cases ------------------------------------------------------------------------


def test_tuple_returning_model_with_probabilities_to_cross_entropy_fires():
    code = """
import torch.nn as nn
import torch.nn.functional as F
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
    def forward(self, x):
        logits = self.fc(x)
        return logits, F.softmax(logits, -1)
model = Net()
logits, probs = model(x)
loss = F.cross_entropy(probs, y)
"""
    (f,) = findings(code, "softmax-before-cross-entropy")
    assert f.line == 13


def test_nll_with_softmax_from_helper_fires():
    code = """
import torch.nn.functional as F
def predict(model, x):
    return F.softmax(model(x), dim=1)
for x, y in loader:
    loss = F.nll_loss(predict(model, x), y)
    loss.backward()
"""
    assert findings(code, "nll-without-log-softmax")


def test_lr_negative_and_param_group_literals():
    code = """
import torch
a = torch.optim.SGD(model.parameters(), lr=-0.01)
b = torch.optim.AdamW([{"params": model.head.parameters(), "lr": 0.5}], lr=1e-4)
"""
    found = findings(code, "lr-out-of-range")
    assert [f.line for f in found] == [3, 4]
    assert "climbs the loss" in found[0].message


# -- value provenance --------------------------------------------------------------------------------------


def _trace(code: str, name: str) -> list[str]:
    tree = ast.parse(textwrap.dedent(code))
    model = TrainingModel(tree)
    uses = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)]
    use = max(uses, key=lambda n: (n.lineno, n.col_offset))
    return [s.kind for s in model.values.trace(use)]


def test_trace_follows_assignments_shape_ops_and_sequential_last_layer():
    code = """
import torch.nn as nn
net = nn.Sequential(nn.Linear(3, 3), nn.Sigmoid())
def f(x):
    out = net(x).view(-1)
    return out
"""
    assert _trace(code, "out") == ["model", "sigmoid"]


def test_trace_stops_at_conditional_definitions():
    code = """
import torch.nn.functional as F
def f(x, flag):
    out = model(x)
    if flag:
        out = F.softmax(out, -1)
    return out
"""
    assert _trace(code, "out") == ["unknown"]


def test_trace_marks_detaching_operations():
    code = """
def f(x):
    out = model(x).detach().cpu()
    return out
"""
    assert _trace(code, "out")[:2] == ["detach", "model"]


def test_running_total_before_the_backward_fires_too():
    code = """
import torch
running = 0
for x, y in loader:
    loss = crit(model(x), y)
    running += loss
    loss.backward()
    opt.step()
"""
    (f,) = findings(code, "loss-accumulated-as-tensor")
    assert f.line == 6 and f.fix is not None


FIRES = {
    "loss-accumulated-as-tensor": """
import torch
stats = {"loss": 0.0}
for x, y in loader:
    loss = crit(model(x), y)
    loss.backward()
    opt.step()
    stats["loss"] += loss
""",
    "functional-dropout-always-on": """
import torch.nn.functional as F
import pytorch_lightning as pl
class Lit(pl.LightningModule):
    def forward(self, x):
        return F.dropout(x, 0.1)
""",
    # LinearLR warms up *to* the base LR: 0.1 is reached
    "lr-out-of-range": """
import torch
opt = torch.optim.AdamW(model.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=100)
""",
    # the model is built in main() and passed to train(): followed through the single call site
    "softmax-before-cross-entropy": """
import torch
import torch.nn as nn
import torch.nn.functional as F
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 3)
    def forward(self, x):
        return F.softmax(self.fc(x), dim=1)
def train(model, loader, criterion, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
def main():
    model = Net()
    train(model, loader, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1))
""",
}


@pytest.mark.parametrize("rule", sorted(FIRES))
def test_more_real_world_cases_fire(rule):
    assert findings(FIRES[rule], rule)


def test_non_leaf_when_the_move_is_a_separate_statement():
    code = """
import torch
def setup(device):
    w = torch.randn(10, 1, requires_grad=True)
    w = w.to(device)
    return torch.optim.SGD([w], lr=0.1)
"""
    (f,) = findings(code, "non-leaf-parameter")
    assert f.line == 5
