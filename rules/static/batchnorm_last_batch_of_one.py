"""batchnorm-last-batch-of-one: a model with batch norm trains from a loader whose last batch can hold one sample."""

from __future__ import annotations

import ast
import os
import re
from typing import Optional

from doctor.analysis.datasets import dataset_length, loaders_reaching
from doctor.analysis.events import BACKWARD, FORWARD, STEP
from doctor.analysis.layers import Layer, Layers, built_by, built_like, source_mentions
from doctor.analysis.modes import loop_iterated
from doctor.analysis.values import literal_number
from doctor.core.findings import Applicability, Edit, Fix, Severity
from doctor.lint.rule import Rule

#: Batch-norm layers; BatchNorm1d on (batch, features) input raises on a batch of one in training.
_BATCH_NORMS = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d"}
_CRASHING = {"BatchNorm1d", "LazyBatchNorm1d"}
#: Layers whose presence suggests BatchNorm1d sees (batch, channels, length) input, where one sample still
#: has many values per channel.
_SEQUENCE_LAYERS = {"Conv1d", "ConvTranspose1d", "LazyConv1d", "LSTM", "GRU", "RNN", "MaxPool1d", "AvgPool1d", "AdaptiveAvgPool1d"}
#: Words without which no model of the file can hold batch norm (cheap test before any search).
_BN_WORDS = re.compile(r"BatchNorm|torchvision|resnet|resnext|densenet|mobilenet|efficientnet|regnet|inception|googlenet|shufflenet|mnasnet|vgg\d+_bn")
#: DataLoader(dataset, batch_size, shuffle, sampler, batch_sampler, num_workers, collate_fn, pin_memory, drop_last)
_DROP_LAST_INDEX = 8


class BatchnormLastBatchOfOne(Rule):
    name = "batchnorm-last-batch-of-one"
    code = "DR704"
    severity = Severity.ERROR
    fixable = Applicability.UNSAFE
    summary = "A model with BatchNorm trains from a DataLoader without `drop_last` whose last batch can hold a single sample."
    why = """
        In training mode batch norm normalises each batch with that batch's own mean and variance. When the
        dataset size leaves a remainder of one (`len(dataset) % batch_size == 1`) and the loader keeps the
        incomplete last batch (the default, `drop_last=False`), one batch per epoch holds a single sample:
        `BatchNorm1d` on `(batch, features)` input then raises `ValueError: Expected more than 1 value per
        channel when training`, typically at the end of the first epoch after hours of work, or only once
        the dataset grows by one file; 2-D/3-D batch norm does not raise but normalises that sample with its
        own statistics and pushes a one-sample estimate into the running mean and variance used at
        evaluation. Pass `drop_last=True` to the training loader.
    """
    known_problems = """
        Reported for a `DataLoader` built in this file (directly, through a same-file builder, or passed to the
        training function) that feeds a loop running backward passes and optimizer steps, without
        `drop_last=True`, a `batch_sampler` or `**kwargs`, when a model called in that loop holds batch norm
        (read from its class in this file or a local module, through submodule classes, builder functions and
        base classes; torchvision ResNets and other architectures known to use it). When the dataset size is
        written in the code (a `TensorDataset` of literal-sized tensors, a list, `range`, `Subset` or
        `random_split` with literal lengths, torchvision's MNIST/CIFAR/SVHN/STL10 splits) it is reported only if
        `size % batch_size == 1`: as an error when the model holds `BatchNorm1d` (the crash), else as a warning.
        When the size cannot be known it is reported as a warning, and only for `BatchNorm1d` in a model without
        1-D convolutions, 1-D pooling or recurrent layers (where one sample would still give several values per
        channel): a guess about the data, said so in the message. A sampler (`DistributedSampler`) changes the
        per-process count, so sizes are not computed then. Models built by other libraries (timm, transformers)
        and layers created dynamically are not seen, nor is batch norm that neither this file nor a module it
        imports (or a package `__init__` it imports re-exports from) names: the rule first looks for the words,
        to keep its searches off files that cannot have it.
    """
    bad = """
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset

        model = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 2))
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        train_set = TensorDataset(torch.randn(1025, 20), torch.randint(0, 2, (1025,)))
        loader = DataLoader(train_set, batch_size=64, shuffle=True)

        for epoch in range(10):
            for x, y in loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
    """
    good = """
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset

        model = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 2))
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        train_set = TensorDataset(torch.randn(1025, 20), torch.randint(0, 2, (1025,)))
        loader = DataLoader(train_set, batch_size=64, shuffle=True, drop_last=True)

        for epoch in range(10):
            for x, y in loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
    """
    fixed = good
    fix_safety = """
        The fix adds `drop_last=True` to the training DataLoader (the result is the good example). It is unsafe
        because each epoch then skips the last `len(dataset) % batch_size` samples (different ones each epoch
        when the loader shuffles, the same ones when it does not) and has one step fewer, which shifts
        step-based schedules. It is offered only when the call has no `drop_last` argument yet.
    """
    fires = (
        """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
class TabularNet(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1 = nn.Linear(d, 128)
        self.bn1 = nn.BatchNorm1d(128)
        self.out = nn.Linear(128, 1)
    def forward(self, x):
        return self.out(torch.relu(self.bn1(self.fc1(x))))
def train(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
net = TabularNet(10)
opt = torch.optim.Adam(net.parameters())
data = TensorDataset(torch.randn(257, 10), torch.randn(257, 1))
for epoch in range(5):
    train(net, DataLoader(data, batch_size=32, shuffle=True), opt)
""",
        """
import torch
import torchvision
from torch.utils.data import DataLoader
model = torchvision.models.resnet18(num_classes=10)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
train_set = torchvision.datasets.SVHN("data", split="train", download=True)
loader = DataLoader(train_set, batch_size=8, shuffle=True)
for epoch in range(3):
    for x, y in loader:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
""",
        """
import torch
from torch import nn
from torch.utils.data import DataLoader
class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32), nn.Linear(32, 4))
    def forward(self, x):
        return self.net(x)
model = Head()
optimizer = torch.optim.Adam(model.parameters())
loader = DataLoader(features_dataset, batch_size=args.batch_size, shuffle=True)
for epoch in range(args.epochs):
    for x, y in loader:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
""",
    )
    silent = (
        """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
model = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loader = DataLoader(TensorDataset(torch.randn(1024, 20), torch.randint(0, 2, (1024,))), batch_size=64, shuffle=True)
for x, y in loader:
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
""",
        """
import torch
from torch import nn
from torch.utils.data import DataLoader
model = nn.Sequential(nn.Linear(20, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loader = DataLoader(train_set, batch_size=64, shuffle=True)
for x, y in loader:
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
""",
        """
import torch
from torch import nn
from torch.utils.data import DataLoader
model = nn.Sequential(nn.Conv1d(8, 16, 3), nn.BatchNorm1d(16), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loader = DataLoader(signals, batch_size=64, shuffle=True)
for x, y in loader:
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
""",
        """
import torch
from torch import nn
from torch.utils.data import DataLoader
model = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
train_loader = DataLoader(train_set, batch_size=64, shuffle=True, drop_last=True)
val_loader = DataLoader(val_set, batch_size=64)
for x, y in train_loader:
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
model.eval()
with torch.no_grad():
    for x, y in val_loader:
        model(x)
""",
        """
import torch
import torchvision
from torch.utils.data import DataLoader
model = torchvision.models.resnet18(num_classes=10)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loader = DataLoader(torchvision.datasets.CIFAR10("data", train=True), batch_size=128, shuffle=True)
for x, y in loader:
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
""",
    )

    def check(self, ctx):
        if "DataLoader" not in ctx.source.text:
            return
        m = ctx.model
        if not source_mentions(m, _BN_WORDS, ctx.source.text):
            return  # no batch norm here or in the modules this file imports: spare the searches below
        layers = Layers(m)
        seen: set[int] = set()
        for loop, events in m.loop_views():
            if loop.iter is None or not any(e.kind == BACKWARD for e in events) or not any(e.kind == STEP for e in events):
                continue
            calls = loaders_reaching(m, loop_iterated(loop.node))
            if not calls:
                continue
            norms: Optional[list] = None
            for c in calls:
                if id(c.node) in seen or not _keeps_last_batch(c):
                    continue
                if norms is None:
                    norms = _batch_norms(m, layers, events)  # the models of the loop, read once (may search callers)
                if not norms:
                    break
                finding = self._judge(ctx, m, c, loop, norms)
                if finding is not None:
                    seen.add(id(c.node))
                    yield finding

    def _judge(self, ctx, m, c, loop, norms: list[tuple[str, Layer]]):
        size_expr = c.keyword("batch_size") or c.positional(1)
        number = literal_number(m, size_expr) if size_expr is not None else None
        batch = int(number) if number is not None and number == int(number) else None
        if size_expr is None or batch == 1:
            return None  # every batch holds one sample: that fails (or is chosen) on the first step
        crashing = [(who, l) for who, l in norms if l.name in _CRASHING]
        layer_who, layer = (crashing or norms)[0]
        where = _where(m, layer)
        samples = None if c.sampler is not None else dataset_length(m, c.dataset)
        batch_text = ctx.segment(size_expr) or "batch_size"
        if samples is not None:
            if batch is None or samples % batch != 1:
                return None
            consequence = (
                "BatchNorm1d raises `ValueError: Expected more than 1 value per channel when training` on it"
                if crashing else
                f"`{layer.name}` normalises it with its own statistics and feeds a one-sample estimate into the running statistics"
            )
            return self.finding(
                ctx,
                c.node,
                f"this DataLoader feeds the training loop on line {loop.node.lineno} with {samples} samples in batches of "
                f"{batch} and keeps the incomplete last batch: every epoch ends with a batch of one sample, and "
                f"{layer_who} holds `{layer.name}`{where}, so {consequence}; pass `drop_last=True`",
                severity=Severity.ERROR if crashing else Severity.WARNING,
                fix=_fix(ctx, c),
            )
        if not crashing:
            return None
        return self.finding(
            ctx,
            c.node,
            f"this DataLoader feeds the training loop on line {loop.node.lineno} and keeps the incomplete last batch "
            f"(no `drop_last=True`), and {layer_who} holds `BatchNorm1d`{where}: whenever the dataset size leaves a "
            f"remainder of one (`len(dataset) % {batch_text} == 1`, which cannot be known from the code) the last batch "
            "holds a single sample and BatchNorm1d raises `ValueError: Expected more than 1 value per channel when "
            "training`; pass `drop_last=True`",
            severity=Severity.WARNING,
            fix=_fix(ctx, c),
        )


def _keeps_last_batch(c) -> bool:
    if c.has_star_kwargs or c.batch_sampler is not None:
        return False
    drop = c.keyword("drop_last") or c.positional(_DROP_LAST_INDEX)
    return drop is None or (isinstance(drop, ast.Constant) and drop.value is False)


def _batch_norms(m, layers: Layers, events) -> list[tuple[str, Layer]]:
    """(`model` description, batch-norm layer) for the models called in the loop, BatchNorm1d first when the
    model has no layer that would make its input 3-D."""
    out: list[tuple[str, Layer]] = []
    for ev in events:
        if ev.kind != FORWARD or ev.program is not None or not isinstance(ev.node, ast.Call):
            continue
        func = ev.node.func
        callee = func.value if isinstance(func, ast.Attribute) and func.attr == "forward" else func
        found = layers.of_object(callee)
        if not found:
            continue
        names = {l.name for l in found}
        who = _describe(m, callee)
        for l in found:
            if l.name not in _BATCH_NORMS:
                continue
            if l.name in _CRASHING and names & _SEQUENCE_LAYERS:
                l = Layer("BatchNorm1d (on sequences)", l.node, l.program, l.by_name)  # not the (batch, features) crash
            out.append((who, l))
    return out


def _describe(m, callee: ast.AST) -> str:
    """`model` (the `TabularNet` built on line 19): which object, and how we know."""
    built = built_by(m, callee)
    text = f"`{ast.unparse(callee)}`"
    if built is None:
        like = built_like(m, callee)
        if like is None:
            return text
        name = like.qualified.rsplit(".", 1)[-1] or ast.unparse(like.call.func)
        return f"{text} (a `{name}`, as every caller of `{getattr(m.enclosing_function(callee), 'name', '?')}()` passes)"
    name = built.qualified.rsplit(".", 1)[-1] or ast.unparse(built.call.func)
    line = built.call.lineno
    where = f"line {line}" if built.program is m else f"{os.path.basename(built.program.path or '')}:{line}"
    return f"{text} (the `{name}` built on {where})"


def _where(m, layer: Layer) -> str:
    if layer.by_name or layer.node is None:
        return " (its architecture uses batch norm)"
    program = layer.program
    line = getattr(layer.node, "lineno", 0)
    if program is None or program is m:
        return f" (line {line})"
    return f" ({os.path.basename(program.path or '')}:{line})"


def _fix(ctx, c) -> Optional[Fix]:
    call = c.node
    if c.keyword("drop_last") is not None or c.positional(_DROP_LAST_INDEX) is not None or c.has_star_kwargs:
        return None
    last = [*call.args, *(kw.value for kw in call.keywords)]
    if not last:
        return None
    end = max(last, key=lambda n: (n.end_lineno, n.end_col_offset))
    line, col = end.end_lineno, ctx.char_column(end.end_lineno, end.end_col_offset)
    return Fix("pass drop_last=True", Applicability.UNSAFE, (Edit(line, col, line, col, ", drop_last=True"),))
