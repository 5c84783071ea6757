"""train-loader-not-shuffled: the DataLoader a training loop iterates neither shuffles nor samples."""

from __future__ import annotations

import ast

from doctor.analysis.events import BACKWARD, STEP
from doctor.analysis.modes import loop_iterated
from doctor.core.findings import Severity
from doctor.lint.rule import Rule


class TrainLoaderNotShuffled(Rule):
    name = "train-loader-not-shuffled"
    code = "DR701"
    severity = Severity.WARNING
    summary = "The DataLoader the training loop iterates has no `shuffle=True` and no sampler."
    why = """
        `DataLoader` does not shuffle by default. A training set stored in class or time order is then seen
        in the same order every epoch: batches hold one class at a time, batch norm statistics swing, and
        the model chases the most recent class. The loss curve looks periodic and the final accuracy is
        lower, with no error anywhere. Pass `shuffle=True` (or a `sampler`, e.g. a `DistributedSampler`).
    """
    known_problems = """
        Reported for a `DataLoader` built in the file (directly or through a same-file builder function) and
        iterated by a loop that runs backward passes and optimizer steps, when that loop is itself repeated (an
        epoch loop around it, or around a same-file call of the function that holds it). Stays silent when
        `shuffle` is written out (`shuffle=False` is taken as a decision: time series, pre-shuffled shards),
        when a `sampler` or `batch_sampler` is given, when `**kwargs` may carry one, when a batch holds the
        whole dataset (`batch_size=len(...)`), for iterable/streaming datasets and datasets that shuffle
        themselves, and for a loop that makes a single pass. Loaders built by other libraries or in other files
        are not checked.
    """
    bad = """
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset

        train_set = TensorDataset(torch.randn(512, 20), torch.randint(0, 2, (512,)))
        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        train_loader = DataLoader(train_set, batch_size=32)

        for epoch in range(10):
            for x, y in train_loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
    """
    good = """
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset

        train_set = TensorDataset(torch.randn(512, 20), torch.randint(0, 2, (512,)))
        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        train_loader = DataLoader(train_set, batch_size=32, shuffle=True)

        for epoch in range(10):
            for x, y in train_loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
    """
    fires = (
        """
import torch
from torch.utils.data import DataLoader
train_loader = DataLoader(train_set, batch_size=64, num_workers=4)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for epoch in range(10):
    for x, y in train_loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
""",
        """
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm
def train(model, loader, optimizer):
    for step, (x, y) in enumerate(tqdm(loader)):
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
def main():
    dl = DataLoader(dataset, batch_size=32)
    for epoch in range(10):
        train(model, dl, optimizer)
""",
    )
    silent = (
        """
import random
import torch
from torch.utils.data import DataLoader, Dataset
class Episodes(Dataset):
    def __len__(self):
        return 10000
    def __getitem__(self, i):
        return random.sample(self.pool, 5)
loader = DataLoader(Episodes(), batch_size=4)
for x, y in loader:
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
""",
        """
import torch
from torch.utils.data import DataLoader
loader = DataLoader(small_set, batch_size=len(small_set))
for epoch in range(100):
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
""",
        """
import torch
from torch.utils.data import DataLoader
def train(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
train(model, get_loader("train"), optimizer)
""",
        """
import torch
from torch.utils.data import DataLoader
train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
val_loader = DataLoader(val_set, batch_size=64)
for x, y in train_loader:
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
with torch.no_grad():
    for x, y in val_loader:
        model(x)
""",
        """
import torch
from torch.utils.data import DataLoader, RandomSampler
loader = DataLoader(train_set, batch_size=64, sampler=RandomSampler(train_set))
for x, y in loader:
    optimizer.zero_grad()
    criterion(model(x), y).backward()
    optimizer.step()
""",
        """
import torch
from torch.utils.data import DataLoader, IterableDataset
class TokenStream(IterableDataset):
    def __iter__(self):
        yield from read_shards()
loader = DataLoader(TokenStream(), batch_size=8)
for batch in loader:
    optimizer.zero_grad()
    model(batch).loss.backward()
    optimizer.step()
""",
        """
import torch
from datasets import load_dataset
from torch.utils.data import DataLoader
ds = load_dataset("c4", "en", split="train", streaming=True)
loader = DataLoader(ds, batch_size=8)
for batch in loader:
    optimizer.zero_grad()
    model(**batch).loss.backward()
    optimizer.step()
""",
        """
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
if distributed:
    loader = DataLoader(ds, batch_size=8, sampler=DistributedSampler(ds))
else:
    loader = DataLoader(ds, batch_size=8, shuffle=True)
for batch in loader:
    optimizer.zero_grad()
    model(batch).loss.backward()
    optimizer.step()
""",
        """
import torch
from torch.utils.data import DataLoader
loader = DataLoader(ds, **loader_kwargs)
for batch in loader:
    optimizer.zero_grad()
    model(batch).loss.backward()
    optimizer.step()
""",
        """
import torch
from torch.utils.data import DataLoader
loader = DataLoader(series, batch_size=32, shuffle=False)  # time series: order matters
for batch in loader:
    optimizer.zero_grad()
    model(batch).loss.backward()
    optimizer.step()
""",
    )

    def check(self, ctx):
        if "DataLoader" not in ctx.source.text:
            return
        m = ctx.model
        data = m.data
        seen: set[int] = set()
        for loop, events in m.loop_views():
            if loop.iter is None or not any(e.kind == BACKWARD for e in events):
                continue
            if not any(e.kind == STEP for e in events):
                continue
            it = loop_iterated(loop.node)
            scope = m.enclosing_function(loop.node)
            calls = data.loaders(it, scope)
            if not calls or any(not _unshuffled(data, c) for c in calls):
                continue
            if data.repeated(loop.node) is None:
                continue  # a single pass (step-limited runs, smoke tests): no epoch repeats the order
            for c in calls:
                if id(c.node) in seen:
                    continue
                seen.add(id(c.node))
                yield self.finding(
                    ctx,
                    c.node,
                    f"this DataLoader feeds the training loop on line {loop.node.lineno}, which runs once per epoch, but "
                    "neither shuffles nor uses a sampler: every epoch sees the data in the same order; pass `shuffle=True`",
                )


def _unshuffled(data, call) -> bool:
    if call.has_star_kwargs or call.shuffle is not None or call.sampler is not None or call.batch_sampler is not None:
        return False  # shuffle=False written out is a decision (time series, pre-shuffled shards)
    batch = call.keyword("batch_size") or call.positional(1)
    if isinstance(batch, ast.Call) and getattr(batch.func, "id", "") == "len":
        return False  # one batch holds the whole dataset: order does not matter
    return not data.dataset_streams(call.dataset)
