"""dataloader-worker-shared-rng: a Dataset's own random generator is copied into every DataLoader worker."""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass
from typing import Optional

from doctor.analysis.datasets import dataset_classes
from doctor.analysis.layers import source_mentions
from doctor.analysis.values import literal_number
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

#: Generators with their own state (not the global ones that torch reseeds in each worker).
_RNG_CTORS = {
    "numpy.random.RandomState", "numpy.random.default_rng", "numpy.random.Generator", "np.random.RandomState",
    "np.random.default_rng", "np.random.Generator", "random.Random", "torch.Generator", "torch._C.Generator",
}  # fmt: skip
#: Words without which no dataset of the file (or of the modules it imports) builds such a generator.
_RNG_WORDS = re.compile(r"RandomState|default_rng|Random\(|Generator\(")
#: Methods a worker runs for each sample.
_SAMPLING = ("__getitem__", "__getitems__", "__iter__", "__next__")
#: Calls on a generator that give it a new state.
_RESEEDS = {"seed", "manual_seed", "set_state", "__setstate__", "bit_generator", "setstate"}
#: DataLoader(dataset, batch_size, shuffle, sampler, batch_sampler, num_workers, collate_fn, pin_memory,
#: drop_last, timeout, worker_init_fn)
_WORKERS_INDEX = 5
_INIT_FN_INDEX = 10


@dataclass(frozen=True)
class SharedRng:
    attr: str
    ctor: str
    created: ast.AST
    program: object
    use: ast.AST
    method: str


class DataloaderWorkerSharedRng(Rule):
    name = "dataloader-worker-shared-rng"
    code = "DR703"
    severity = Severity.WARNING
    summary = "A Dataset draws from a random generator created once in `__init__`, and the DataLoader runs it in several workers without reseeding it: every worker replays the same random numbers."
    why = """
        With `num_workers > 0` each worker process gets a copy of the dataset object, generator state
        included. torch reseeds its own generator and the global `random`/`numpy.random` state in every
        worker (since torch 1.9), but not a generator the dataset owns (`np.random.RandomState(seed)`,
        `np.random.default_rng(seed)`, `random.Random(seed)`, `torch.Generator()`): every worker then draws
        the same sequence, so samples served by different workers get identical crops, flips, masks or
        negative samples. The augmentation is far less random than intended and nothing errors. Reseed the
        generator per worker (a `worker_init_fn` that does `info = torch.utils.data.get_worker_info();
        info.dataset.rng = np.random.default_rng(info.seed)`), or create it lazily inside the worker.
    """
    known_problems = """
        Reported for a `DataLoader` built in this file whose `num_workers` is a positive number or an expression
        (said so in the message: with 0 workers nothing is wrong), with no `worker_init_fn` and no `**kwargs`,
        when its dataset is built by a class we can read (this file or a local module, through assignments,
        callers, `Subset` and `ConcatDataset`) that stores such a generator on `self` outside its per-sample
        methods and uses it in `__getitem__`/`__iter__`/`__next__` or in a method of the class those call. Stays
        silent when the class calls `get_worker_info()` anywhere, or reseeds or re-creates the generator in the
        per-sample path (`self.rng.seed(...)`, `self.rng = np.random.default_rng(seed + idx)`). A generator
        passed in from outside (`MyDataset(rng=...)`), held by a transform object, or built in a module this
        file does not import directly is not followed. Any `worker_init_fn` silences the rule, even one that
        reseeds only the global generators and leaves the dataset's own untouched (a missed bug).
    """
    bad = """
        import numpy as np
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, Dataset


        class NoisyImages(Dataset):
            def __init__(self, images, labels, seed=0):
                self.images, self.labels = images, labels
                self.rng = np.random.default_rng(seed)

            def __len__(self):
                return len(self.images)

            def __getitem__(self, i):
                noise = self.rng.normal(0.0, 0.1, size=self.images[i].shape)
                return torch.as_tensor(self.images[i] + noise, dtype=torch.float32), self.labels[i]


        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        data = NoisyImages(np.random.rand(1000, 28, 28), np.random.randint(0, 10, 1000))
        loader = DataLoader(data, batch_size=32, shuffle=True, num_workers=4)

        if __name__ == "__main__":
            for epoch in range(5):
                for x, y in loader:
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(model(x), y).backward()
                    optimizer.step()
    """
    good = """
        import numpy as np
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, Dataset, get_worker_info


        class NoisyImages(Dataset):
            def __init__(self, images, labels, seed=0):
                self.images, self.labels = images, labels
                self.rng = np.random.default_rng(seed)

            def __len__(self):
                return len(self.images)

            def __getitem__(self, i):
                noise = self.rng.normal(0.0, 0.1, size=self.images[i].shape)
                return torch.as_tensor(self.images[i] + noise, dtype=torch.float32), self.labels[i]


        def reseed(worker_id):
            info = get_worker_info()
            info.dataset.rng = np.random.default_rng(info.seed)


        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        data = NoisyImages(np.random.rand(1000, 28, 28), np.random.randint(0, 10, 1000))
        loader = DataLoader(data, batch_size=32, shuffle=True, num_workers=4, worker_init_fn=reseed)

        if __name__ == "__main__":
            for epoch in range(5):
                for x, y in loader:
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(model(x), y).backward()
                    optimizer.step()
    """
    fires = (
        """
import random
from torch.utils.data import DataLoader, Dataset
class Pairs(Dataset):
    def __init__(self, items, seed):
        self.items = items
        self.random = random.Random(seed)
    def __len__(self):
        return len(self.items)
    def pick_negative(self):
        return self.random.choice(self.items)
    def __getitem__(self, i):
        return self.items[i], self.pick_negative()
loader = DataLoader(Pairs(items, 0), batch_size=64, num_workers=args.workers)
""",
        """
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
class Crops(Dataset):
    def __init__(self, frames):
        self.frames = frames
        self.rs = np.random.RandomState(1234)
    def __len__(self):
        return len(self.frames)
    def __getitem__(self, i):
        y, x = self.rs.randint(0, 32, size=2)
        return self.frames[i][y:y + 224, x:x + 224]
def make_loader(dataset, workers=8):
    return DataLoader(dataset, batch_size=16, shuffle=True, num_workers=workers)
train_loader = make_loader(Subset(Crops(frames), range(1000)))
""",
    )
    silent = (
        """
import numpy as np
from torch.utils.data import DataLoader, Dataset
class Crops(Dataset):
    def __init__(self, frames):
        self.frames = frames
    def __len__(self):
        return len(self.frames)
    def __getitem__(self, i):
        y, x = np.random.randint(0, 32, size=2)  # global numpy state: reseeded per worker by torch
        return self.frames[i][y:y + 224, x:x + 224]
loader = DataLoader(Crops(frames), batch_size=16, num_workers=8)
""",
        """
import numpy as np
from torch.utils.data import DataLoader, Dataset
class Crops(Dataset):
    def __init__(self, frames, seed=0):
        self.frames = frames
        self.rng = np.random.default_rng(seed)
    def __len__(self):
        return len(self.frames)
    def __getitem__(self, i):
        y, x = self.rng.integers(0, 32, size=2)
        return self.frames[i][y:y + 224, x:x + 224]
loader = DataLoader(Crops(frames), batch_size=16)
""",
        """
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
class Stream(IterableDataset):
    def __init__(self, files, seed=0):
        self.files = files
        self.rng = np.random.default_rng(seed)
    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        if info is not None:
            self.rng = np.random.default_rng(info.seed)
        for f in self.files[self.rng.integers(0, len(self.files)):]:
            yield f
loader = DataLoader(Stream(files), batch_size=16, num_workers=4)
""",
        """
import numpy as np
from torch.utils.data import DataLoader, Dataset
class Crops(Dataset):
    def __init__(self, frames, seed=0):
        self.frames = frames
        self.seed = seed
        self.order = np.random.RandomState(seed).permutation(len(frames))
    def __len__(self):
        return len(self.frames)
    def __getitem__(self, i):
        rng = np.random.default_rng(self.seed + i)  # one generator per sample: deterministic on purpose
        return self.frames[self.order[i]] + rng.normal(size=3)
loader = DataLoader(Crops(frames), batch_size=16, num_workers=4)
""",
        """
import numpy as np
from torch.utils.data import DataLoader, Dataset
class Crops(Dataset):
    def __init__(self, frames):
        self.frames = frames
        self.rng = np.random.default_rng(0)
    def __len__(self):
        return len(self.frames)
    def __getitem__(self, i):
        return self.frames[i] + self.rng.normal(size=3)
def seed_worker(worker_id):
    np.random.seed(torch.initial_seed() % 2**32)
loader = DataLoader(Crops(frames), batch_size=16, num_workers=4, worker_init_fn=seed_worker)
""",
    )

    def check(self, ctx):
        text = ctx.source.text
        if "DataLoader" not in text:
            return
        m = ctx.model
        if not source_mentions(m, _RNG_WORDS, text):
            return  # no generator constructor here or in the modules this file imports
        for call in m.nodes(ast.Call):
            if not m.data.is_loader_ctor(call):
                continue
            kwargs = {kw.arg: kw.value for kw in call.keywords}
            if None in kwargs or any(isinstance(a, ast.Starred) for a in call.args):
                continue
            if "worker_init_fn" in kwargs or len(call.args) > _INIT_FN_INDEX:
                continue
            workers = kwargs.get("num_workers", call.args[_WORKERS_INDEX] if len(call.args) > _WORKERS_INDEX else None)
            if workers is None:
                continue
            number = _workers(m, workers)
            if number is not None and number <= 0:
                continue
            dataset = call.args[0] if call.args else kwargs.get("dataset")
            classes = dataset_classes(m, dataset)
            if not classes:
                continue
            for program, cls in classes:
                shared = _shared_rng(program, cls)
                if shared is None:
                    continue
                where = _where(m, shared.program, shared.created)
                how = f"num_workers={ctx.segment(workers)}" + ("" if number is not None else ", whenever it is above 0")
                yield self.finding(
                    ctx,
                    call,
                    f"`{cls.name}` draws from `self.{shared.attr}` in {shared.method}, {_where(m, shared.program, shared.use)}, "
                    f"a `{shared.ctor}` created once ({where}), and this DataLoader copies it into every worker "
                    f"({how}) without a `worker_init_fn`: each worker replays the same random numbers, so the "
                    "random augmentation repeats across workers; reseed it per worker",
                )
                break


def _shared_rng(program, cls: ast.ClassDef) -> Optional[SharedRng]:
    """A generator stored on ``self`` outside the per-sample methods and drawn from inside them."""
    methods: dict[str, tuple[object, ast.AST]] = {}
    for prog, klass in program.class_bases(cls):
        for item in klass.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                methods.setdefault(item.name, (prog, item))
    sampling = _sampling_methods(methods)
    if not sampling:
        return None
    created: dict[str, tuple[object, ast.AST, str]] = {}
    for name, (prog, fn) in methods.items():
        if name in sampling:
            continue
        for node in prog.index.within(fn, ast.Assign, ast.AnnAssign):
            value = node.value
            ctor = _rng_ctor(prog, value) if value is not None else None
            if ctor is None:
                continue
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    created.setdefault(t.attr, (prog, node, ctor))
    if not created:
        return None
    for prog, fn in methods.values():
        for call in prog.index.within(fn, ast.Call):
            name = (prog.imports.qualify(call.func) or "").rsplit(".", 1)[-1]
            if name == "get_worker_info":
                return None  # the dataset seeds itself per worker
    for name in sampling:
        prog, fn = methods[name]
        for node in prog.index.within(fn, ast.Attribute):
            if not (isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in created):
                continue
            if isinstance(node.ctx, ast.Store):
                created.pop(node.attr)  # re-created per sample (or lazily, in the worker)
                continue
            parent = prog.parents.get(id(node))
            if isinstance(parent, ast.Attribute) and parent.attr in _RESEEDS:
                created.pop(node.attr)
    for name in sampling:
        prog, fn = methods[name]
        for node in prog.index.within(fn, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in created and isinstance(node.ctx, ast.Load):
                cprog, cnode, ctor = created[node.attr]
                return SharedRng(node.attr, ctor, cnode, cprog, node, _sampling_label(name, sampling))
    return None


def _sampling_methods(methods: dict[str, tuple[object, ast.AST]]) -> dict[str, str]:
    """The per-sample methods and the same-class methods they call (transitively): name -> entry point."""
    out: dict[str, str] = {}
    todo = [(name, name) for name in _SAMPLING if name in methods]
    while todo:
        name, entry = todo.pop()
        if name in out:
            continue
        out[name] = entry
        prog, fn = methods[name]
        for call in prog.index.within(fn, ast.Call):
            f = call.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self" and f.attr in methods:
                todo.append((f.attr, entry))
    return out


def _sampling_label(name: str, sampling: dict[str, str]) -> str:
    entry = sampling.get(name, name)
    return f"`{name}()`" if entry == name else f"`{name}()` (called from `{entry}()`)"


def _workers(m, expr: ast.AST) -> Optional[float]:
    """The number of workers: a literal, a module constant, or a parameter every visible caller (or the default)
    gives the same literal."""
    number = literal_number(m, expr)
    if number is not None or not isinstance(expr, ast.Name):
        return number
    fn = m.enclosing_function(expr)
    if fn is m.tree or expr.id not in {a.arg for a in fn.args.args + fn.args.kwonlyargs + fn.args.posonlyargs} or m.rebinds(fn, expr.id):
        return None
    found = {literal_number(program, value) for program, value in m.argument_values(fn, expr.id)}
    return found.pop() if len(found) == 1 else None


def _rng_ctor(program, value: ast.AST) -> Optional[str]:
    """`np.random.default_rng(seed)`, `random.Random(seed)`, `torch.Generator().manual_seed(s)`: the constructor."""
    while isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "manual_seed" and isinstance(value.func.value, ast.Call):
        value = value.func.value
    if not isinstance(value, ast.Call):
        return None
    q = program.imports.qualify(value.func) or ""
    return q if q in _RNG_CTORS else None


def _where(m, program, node) -> str:
    line = getattr(node, "lineno", 0)
    if program is m or program is None or not getattr(program, "path", None):
        return f"line {line}"
    return f"{os.path.basename(program.path)}:{line}"
