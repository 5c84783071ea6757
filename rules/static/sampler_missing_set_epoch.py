"""sampler-missing-set-epoch: a DistributedSampler is iterated epoch after epoch without set_epoch()."""

from __future__ import annotations

import ast
import re
from typing import Optional

from doctor.analysis.data import LoaderCall
from doctor.analysis.modes import loop_iterated
from doctor.analysis.names import receiver_key
from doctor.core.findings import Applicability, Severity
from doctor.lint.fixes import insert_before
from doctor.lint.rule import Rule

_EVAL_NAME = re.compile(r"(^|[^a-zA-Z])(val|valid|validation|eval|test|dev)(_|$|[A-Z]|set|data|loader|sampler)", re.I)
_BUILTINS = {"len", "print", "iter", "next", "enumerate", "isinstance", "hasattr", "getattr", "str", "repr", "type", "id", "list"}
_PREPARE = {"prepare", "prepare_data_loader", "setup_dataloaders", "skip_first_batches"}


class SamplerMissingSetEpoch(Rule):
    name = "sampler-missing-set-epoch"
    code = "DR702"
    severity = Severity.WARNING
    fixable = Applicability.UNSAFE
    summary = "A `DistributedSampler` is iterated over several epochs without `sampler.set_epoch(epoch)`."
    why = """
        `DistributedSampler` shuffles with a generator seeded by `seed + epoch`, and the epoch only changes
        when you call `set_epoch`. Without it every epoch uses exactly the same permutation on every rank,
        so the model sees the data in one fixed order for the whole run, as if shuffling were off after the
        first epoch. The docs say to call it "at the beginning of each epoch before creating the DataLoader
        iterator"; nothing warns when you forget.
    """
    known_problems = """
        Reported for a `DistributedSampler` built in the file whose loader is iterated inside an epoch loop
        (directly, or passed to a helper called in a loop) when no `set_epoch` call in the file may reach it.
        Any `set_epoch(...)` call that does not clearly target another sampler or loader counts, so a call on
        the wrong object can hide the mistake. Stays silent for `shuffle=False` samplers, for samplers and
        loaders named like validation or test data, for loaders handed to Accelerate's `prepare` or Fabric's
        `setup_dataloaders` (they set the epoch), and when the loader is passed to a helper together with the
        epoch variable (the helper may call `set_epoch`).
    """
    bad = """
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

        train_set = TensorDataset(torch.randn(512, 20), torch.randint(0, 2, (512,)))
        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        sampler = DistributedSampler(train_set, num_replicas=1, rank=0)
        train_loader = DataLoader(train_set, batch_size=32, sampler=sampler)

        for epoch in range(10):
            for x, y in train_loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
    """
    good = """
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

        train_set = TensorDataset(torch.randn(512, 20), torch.randint(0, 2, (512,)))
        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        sampler = DistributedSampler(train_set, num_replicas=1, rank=0)
        train_loader = DataLoader(train_set, batch_size=32, sampler=sampler)

        for epoch in range(10):
            sampler.set_epoch(epoch)
            for x, y in train_loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
    """
    fixed = """
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

        train_set = TensorDataset(torch.randn(512, 20), torch.randint(0, 2, (512,)))
        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        sampler = DistributedSampler(train_set, num_replicas=1, rank=0)
        train_loader = DataLoader(train_set, batch_size=32, sampler=sampler)

        for epoch in range(10):
            sampler.set_epoch(epoch)
            for x, y in train_loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
    """
    fix_safety = """
        The fix inserts `sampler.set_epoch(epoch)` as the first statement of the epoch loop (through the
        loader's `.sampler` when the sampler has no name of its own, and behind `if hasattr(..., "set_epoch")`
        when the sampler may be `None` or another sampler). It is unsafe because from the second epoch on the
        data order changes: results differ from earlier runs, and a run resumed from a checkpoint of the old
        code will not see the batches it would have seen. It is offered only for a `for` loop whose target is a
        plain name and a sampler or loader bound in the same function.
    """
    fires = (
        """
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
sampler = DistributedSampler(train_set)
loader = DataLoader(train_set, batch_size=32, sampler=sampler)
for epoch in range(10):
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
""",
        """
import torch
from torch.utils.data import DataLoader, BatchSampler, DistributedSampler
def main():
    batch_sampler = BatchSampler(DistributedSampler(ds), batch_size=16, drop_last=True)
    train_loader = DataLoader(ds, batch_sampler=batch_sampler)
    for epoch in range(epochs):
        train_one_epoch(model, train_loader, optimizer)
""",
    )
    silent = (
        """
import torch
from torch.utils.data import DataLoader, DistributedSampler
val_loader = DataLoader(val_set, batch_size=64, sampler=DistributedSampler(val_set))
for epoch in range(10):
    train_one_epoch(model, train_loader, optimizer, epoch)
    for batch in val_loader:
        evaluate(batch)
""",
        """
import torch
from torch.utils.data import DataLoader, DistributedSampler
from engine import train_one_epoch
loader = DataLoader(ds, batch_size=32, sampler=DistributedSampler(ds))
for epoch in range(10):
    train_one_epoch(model, loader, optimizer, epoch)
""",
        """
import torch
from torch.utils.data import DataLoader, DistributedSampler
loader = DataLoader(ds, batch_size=32, sampler=DistributedSampler(ds))
for epoch in range(10):
    loader.sampler.set_epoch(epoch)
    for batch in loader:
        train_step(batch)
""",
        """
import torch
from torch.utils.data import DataLoader, DistributedSampler
sampler = DistributedSampler(ds) if distributed else None
loader = DataLoader(ds, batch_size=32, sampler=sampler, shuffle=sampler is None)
for epoch in range(10):
    if distributed:
        sampler.set_epoch(epoch)
    for batch in loader:
        train_step(batch)
""",
        """
import torch
from torch.utils.data import DataLoader, BatchSampler, DistributedSampler
batch_sampler = BatchSampler(DistributedSampler(ds), batch_size=16, drop_last=True)
loader = DataLoader(ds, batch_sampler=batch_sampler)
for epoch in range(10):
    loader.batch_sampler.sampler.set_epoch(epoch)
    for batch in loader:
        train_step(batch)
""",
        """
import torch
from torch.utils.data import DataLoader, DistributedSampler
val_loader = DataLoader(val_ds, batch_size=32, sampler=DistributedSampler(val_ds, shuffle=False))
for epoch in range(10):
    for batch in val_loader:
        evaluate(batch)
""",
        """
import torch
from torch.utils.data import DataLoader, DistributedSampler
sampler = DistributedSampler(ds)
loader = DataLoader(ds, batch_size=32, sampler=sampler)
for batch in loader:
    train_step(batch)
""",
        """
import torch
from torch.utils.data import DataLoader, DistributedSampler
def train_epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
    for batch in loader:
        train_step(batch)
train_loader = DataLoader(ds, sampler=DistributedSampler(ds))
for epoch in range(10):
    train_epoch(train_loader, epoch)
""",
    )

    def check(self, ctx):
        if "DistributedSampler" not in ctx.source.text:
            return  # cheap exit: most files build no sampler
        m = ctx.model
        data = m.data
        samplers = data.distributed_samplers()
        if not samplers:
            return
        loops = _loader_loops(m)
        for s in samplers:
            if _no_shuffle(s):
                continue
            skey = data.assigned_key(s)
            loaders = _loaders_using(m, s, skey)
            if not loaders:
                continue
            lkeys = {k for k in (data.assigned_key(c) for c in loaders) if k}
            if any(_EVAL_NAME.search(k) for k in lkeys | {skey or ""}) or _EVAL_NAME.search(ast.unparse(s)):
                continue  # a validation/test sampler: its order does not matter
            if _prepared(m, lkeys) or _covered(m, s, skey, lkeys):
                continue
            epoch = _epoch_loop(m, loops, loaders)
            if epoch is None:
                continue
            outer, inner = epoch
            yield self.finding(
                ctx,
                s,
                f"this DistributedSampler feeds a loader iterated once per epoch (line {outer.lineno}) but "
                "`set_epoch(epoch)` is never called: every epoch reuses the same shuffling order; call it at the top of the epoch loop",
                fix=_fix(ctx, s, skey, loaders, lkeys, outer),
            )


def _no_shuffle(s: ast.Call) -> bool:
    return any(kw.arg == "shuffle" and isinstance(kw.value, ast.Constant) and kw.value.value is False for kw in s.keywords)


def _refers(expr: Optional[ast.AST], s: ast.Call, skey: Optional[str]) -> bool:
    """``expr`` is the sampler itself, or contains it (``DistributedSampler(ds) if ddp else None``)."""
    if expr is None:
        return False
    for node in ast.walk(expr):
        if node is s:
            return True
        if skey and isinstance(node, (ast.Name, ast.Attribute)) and receiver_key(node) == skey:
            return True
    return False


def _loaders_using(m, s, skey) -> list[ast.Call]:
    data = m.data
    out = []
    batch_keys: set[str] = set()
    for node in m.index.scan(ast.Call):
        if isinstance(node, ast.Call) and data.name_of(node) == "BatchSampler" and _refers(node.args[0] if node.args else None, s, skey):
            k = data.assigned_key(node)
            if k:
                batch_keys.add(k)
            else:
                batch_keys.add(f"__node{id(node)}")
    for node in m.index.scan(ast.Call):
        if not data.is_loader_ctor(node):
            continue
        call = LoaderCall(node, None)
        if _refers(call.sampler, s, skey):
            out.append(node)
            continue
        bs = call.batch_sampler
        if bs is not None and (
            receiver_key(bs) in batch_keys or _refers(bs, s, skey) or any(f"__node{id(n)}" in batch_keys for n in ast.walk(bs))
        ):
            out.append(node)
    return out


def _prepared(m, lkeys) -> bool:
    """Accelerate/Fabric re-wrap the loader and set the epoch themselves."""
    for node in m.index.scan(ast.Call):
        if isinstance(node, ast.Call) and m.data.name_of(node) in _PREPARE:
            if any(receiver_key(a) in lkeys for a in node.args):
                return True
    return False


def _covered(m, s, skey, lkeys) -> bool:
    """Some ``set_epoch`` call may reach this sampler (unless it clearly targets another sampler or loader)."""
    data = m.data
    others = {data.assigned_key(o) for o in data.distributed_samplers() if o is not s} - {None, skey}
    other_loaders = {
        data.assigned_key(n) for n in m.index.scan(ast.Call) if data.is_loader_ctor(n)
    } - {None} - lkeys
    for call in data.set_epoch_calls():
        key = receiver_key(call.func.value) or ""
        root = key.split(".")[0]
        if key in others or root in other_loaders and root not in lkeys:
            continue
        if any(key == o or key.startswith(o + ".") for o in other_loaders if o not in lkeys):
            continue
        return True
    return False


def _loader_loops(m) -> list[tuple[ast.AST, list[ast.Call]]]:
    out = []
    for node in m.index.scan(ast.For, ast.AsyncFor):
        if isinstance(node, (ast.For, ast.AsyncFor)):
            calls = m.data.loaders(loop_iterated(node), m.enclosing_function(node))
            if calls:
                out.append((node, [c.node for c in calls]))
    return out


def _epoch_loop(m, loops, loaders):
    """(outer loop, loader loop): the loader is iterated inside another loop, directly or through a helper."""
    for loop, calls in loops:
        if any(c is l for c in calls for l in loaders):
            outer = m.data.repeated(loop)
            if outer is not None:
                return outer, loop
    # The loader passed to a helper from inside a loop (`for epoch ...: train_one_epoch(model, loader)`).
    for node in m.index.scan(ast.Call):
        if isinstance(node, ast.Call) and any(_mentions(a, loaders, m) for a in list(node.args) + [k.value for k in node.keywords]):
            outer = _outer_loop(m, node)
            if outer is not None and isinstance(node.func, ast.Name) and node.func.id not in set(m.functions) | _BUILTINS:
                if _passes_loop_variable(node, outer):
                    continue  # `train_one_epoch(loader, epoch)` may call set_epoch itself
                return outer, None
    return None


def _passes_loop_variable(call, loop) -> bool:
    names = {n.id for n in ast.walk(getattr(loop, "target", ast.Pass())) if isinstance(n, ast.Name)}
    args = list(call.args) + [k.value for k in call.keywords]
    return any(isinstance(n, ast.Name) and n.id in names for a in args for n in ast.walk(a))


def _mentions(arg, loaders, m) -> bool:
    calls = m.data.loaders(arg, m.enclosing_function(arg)) if isinstance(arg, (ast.Name, ast.Attribute)) else None
    return bool(calls) and any(c.node is l for c in calls for l in loaders)


def _outer_loop(m, node):
    cur = m.parents.get(id(node))
    while cur is not None and not isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
        if isinstance(cur, (ast.For, ast.AsyncFor, ast.While)):
            return cur
        cur = m.parents.get(id(cur))
    return None


def _fix(ctx, s, skey, loaders, lkeys, outer):
    if not isinstance(outer, (ast.For, ast.AsyncFor)) or not isinstance(outer.target, ast.Name) or not outer.body:
        return None
    scope = ctx.model.enclosing_function(outer)

    def visible(key: str, value: ast.AST) -> bool:
        """The name can be used at the top of the epoch loop: bound in the same function (or ``self.``)."""
        return "[]" not in key and (key.startswith("self.") or ctx.model.enclosing_function(value) is scope)

    if skey and visible(skey, s):
        expr = skey
    elif len(lkeys) == 1 and len(loaders) == 1 and visible(next(iter(lkeys)), loaders[0]):
        lkey = next(iter(lkeys))
        call = LoaderCall(loaders[0], lkey)
        expr = f"{lkey}.sampler" if call.sampler is not None else f"{lkey}.batch_sampler.sampler"
    else:
        return None
    code = f"{expr}.set_epoch({outer.target.id})"
    if not isinstance(ctx.model.parents.get(id(s)), (ast.Assign, ast.keyword, ast.Call)):
        # `DistributedSampler(ds) if distributed else None`: the sampler may be None or another sampler.
        code = f'if hasattr({expr}, "set_epoch"): {code}'
    return insert_before(ctx, outer.body[0], code, f"call `{expr}.set_epoch({outer.target.id})` at the top of each epoch")
