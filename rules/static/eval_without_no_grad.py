"""eval-without-no-grad: an evaluation loop runs the model with gradient recording on."""

from __future__ import annotations

import os

from doctor.analysis.events import BACKWARD, EVAL, FORWARD, TRAIN
from doctor.analysis.modes import report_node
from doctor.core.findings import Severity
from doctor.lint.rule import Rule


class EvalWithoutNoGrad(Rule):
    name = "eval-without-no-grad"
    code = "DR601"
    severity = Severity.WARNING
    summary = "An evaluation loop runs the model without `torch.no_grad()` / `torch.inference_mode()`."
    why = """
        `model.eval()` switches dropout and batch norm to inference behaviour; it does not stop autograd.
        Without `torch.no_grad()` (or `inference_mode()`, or the decorator) every validation forward pass
        builds a graph and keeps its activations alive as long as its outputs live, so evaluation needs
        training-sized memory (and OOMs on the larger validation batches people pick), and runs slower.
        Accumulating `total_loss += loss` then keeps every batch's graph alive until the end of the loop.
    """
    known_problems = """
        Looks at functions that evaluate (named like `evaluate`, `validate`, `test_epoch`, `run_eval`..., or
        calling `.eval()` and running a forward pass in a loop without training) and at forward passes after
        `.eval()` in a loop that does not train. Stays silent when gradients are off at the call (a `with`
        block, a decorator, a `torch.set_grad_enabled(False)` statement in the function or module), when every
        same-file caller of the function disables them, when the function needs gradients on purpose (it calls
        `backward`, `torch.autograd.grad`, `enable_grad`, sets `requires_grad`: saliency maps, adversarial
        attacks), when a backward runs later before `.train()` (policy rollouts), when the model's parameters
        were frozen earlier in the function (`model.requires_grad_(False)`) or its readable class holds no trainable
        parameter (only frozen `nn.Embedding.from_pretrained` tables, buffers, numbers), and for `test*` functions of test
        files. A function named like an evaluation that only runs the model once on made-up tensors
        (`torch.randn`...) is a smoke test, not an evaluation. Grad disabled by a caller in another file is not
        seen, so such an evaluation function is reported.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 2))
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        train_loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        val_loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(4)]


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
def evaluate(model, loader):
    model.eval()
    correct = 0
    for x, y in loader:
        out = model(x)
        correct += (out.argmax(1) == y).sum().item()
    return correct
""",
        """
import torch
def validate(model, val_loader, criterion):
    total = 0.0
    for x, y in val_loader:
        total += criterion(model(x), y).item()
    return total
""",
        """
import torch
for epoch in range(10):
    model.train()
    for x, y in train_loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
    model.eval()
    for x, y in val_loader:
        val_loss = criterion(model(x), y)
""",
    )
    silent = (
        """
import unittest
import torch
class TestInference(unittest.TestCase):
    def test_ddp_inference(self):
        model.eval()
        for _ in range(6):
            self.assertEqual(model(inp), local_model(inp))
""",
        """
import torch
torch.set_grad_enabled(False)
def evaluate(model, loader):
    model.eval()
    for x, y in loader:
        out = model(x)
""",
        """
import torch
@torch.no_grad()
def evaluate(model, loader):
    model.eval()
    for x, y in loader:
        out = model(x)
""",
        """
import torch
def evaluate(model, loader):
    model.eval()
    with torch.inference_mode():
        for x, y in loader:
            out = model(x)
""",
        """
import torch
def evaluate(model, loader):
    model.eval()
    with torch.set_grad_enabled(False):
        for x, y in loader:
            out = model(x)
""",
        """
import torch
def evaluate(model, loader):
    model.eval()
    for x, y in loader:
        out = model(x)
def main():
    for epoch in range(3):
        train_one_epoch(model, train_loader, optimizer)
        with torch.no_grad():
            evaluate(model, val_loader)
""",
        """
import torch
def compute_saliency(model, loader):
    model.eval()
    for x, y in loader:
        x.requires_grad_(True)
        out = model(x)
        out.sum().backward()
""",
        """
import torch
from torchvision import models
backbone = models.resnet50(weights="DEFAULT")
backbone.eval()
head = torch.nn.Linear(2048, 10)
opt = torch.optim.SGD(head.parameters(), lr=0.1)
for x, y in loader:
    with torch.no_grad():
        feats = backbone(x)
    loss = criterion(head(feats), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
""",
        """
import lightning as L
class Model(L.LightningModule):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self.model(x), y)
        self.log("val_loss", loss)
""",
    )

    def check(self, ctx):
        m = ctx.model
        modes = m.modes
        # Unit tests call `model.eval()` and compare outputs; their memory use is not a training problem.
        test_file = (
            os.path.basename(ctx.path).startswith("test_") or "pytest" in m.imports.aliases
            or "unittest" in m.imports.aliases
        )
        reported: set[int] = set()
        for ef in modes.eval_functions:
            fn = ef.fn
            if test_file and fn.name.startswith("test"):
                continue
            if modes.enables_grad(fn) or modes.callers_disable_grad(fn):
                continue
            saw_eval = False
            for e in ef.events:
                saw_eval = saw_eval or e.kind == EVAL
                if e.kind != FORWARD or not (e.loops or saw_eval) or _grad_off(modes, e):
                    continue
                node = report_node(e)
                if id(node) not in reported:
                    reported.add(id(node))
                    yield self._report(ctx, e, node, f"in `{fn.name}()`")
                break
        # Validation inside a training function: forwards after `model.eval()` in a loop that does not train.
        for stream in m.streams:
            events = stream.events
            if stream.owner is not m.tree and (
                getattr(stream.owner, "name", "") in ("forward", "__call__")
                or modes.enables_grad(stream.owner) or modes.callers_disable_grad(stream.owner)
                or any(ef.fn is stream.owner for ef in modes.eval_functions)
            ):
                continue
            evaluating = None
            done_loops: set[int] = set()
            for e in events:
                if e.kind == EVAL:
                    evaluating = e
                elif e.kind == TRAIN:
                    evaluating = None
                elif e.kind == FORWARD and evaluating is not None and e.loop is not None and e.loop.id not in done_loops:
                    if any(b.kind == BACKWARD and e.loop in b.loops for b in events) or _grad_off(modes, e):
                        continue
                    if _backward_later(e, events):
                        continue  # the outputs may feed a later backward (REINFORCE-style rollouts)
                    done_loops.add(e.loop.id)
                    node = report_node(e, evaluating)
                    if id(node) not in reported:
                        reported.add(id(node))
                        yield self._report(ctx, e, node, "after `.eval()`")

    def _report(self, ctx, e, node, where):
        return self.finding(
            ctx,
            node,
            f"`{ctx.segment(e.node)}` runs {where} with gradient recording on: every forward pass keeps its graph "
            "and activations; wrap the evaluation loop in `with torch.no_grad():` (or decorate the function with "
            "`@torch.no_grad()`)",
        )


def _backward_later(e, events) -> bool:
    """A backward runs after ``e`` before the model is switched back to train mode."""
    for later in events:
        if later.order <= e.order:
            continue
        if later.kind == TRAIN:
            return False
        if later.kind == BACKWARD:
            return True
    return False


def _grad_off(modes, e) -> bool:
    if e.no_grad or "enable_grad" in e.contexts:
        return True
    if modes.parameters_frozen(e.target, e.via[0] if e.via else e.node):
        return True
    if modes.grad_disabled_at(e.node) or modes.grad_disabled_globally(e.via[0] if e.via else e.node):
        return True
    return any(modes.grad_disabled_at(site) for site in e.via)
