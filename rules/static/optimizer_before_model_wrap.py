"""optimizer-before-model-wrap: the optimizer is built before a wrap or move that leaves it holding the wrong tensors."""

from __future__ import annotations

import ast
import os
from typing import Iterator, Optional

from doctor.analysis.modules import optimizer_builds
from doctor.analysis.names import receiver_key
from doctor.analysis.order import runs_after, statement
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

#: Wrappers that replace the module's parameters with new (flattened, sharded) tensors.
_SHARDING_WRAPPERS = {"FullyShardedDataParallel", "FSDP", "fully_shard", "FullyShardedDataParallelPlugin"}
#: Optimizers that create per-parameter state tensors in their constructor.
_EAGER_STATE = {"Adagrad"}
_DEVICE_MOVES = {"cuda", "to", "xpu", "npu", "mps"}


class OptimizerBeforeModelWrap(Rule):
    name = "optimizer-before-model-wrap"
    code = "DR803"
    severity = Severity.ERROR
    summary = "The optimizer is built before FSDP (or another sharding wrap) replaces the model's parameters, or holds state on the device the model then leaves."
    why = """
        An optimizer keeps references to the parameter tensors it was given. `FullyShardedDataParallel(model)` and
        `fully_shard(model)` replace those parameters with new flattened, sharded ones: an optimizer built before
        the wrap updates the old tensors, which the model no longer uses, so training silently does nothing (or
        fails on the first step, depending on the version and flags). PyTorch's FSDP documentation says to build
        the optimizer after wrapping. Moving the model with `.cuda()`/`.to(device)` after building the optimizer is
        fine for SGD and Adam without state (the move keeps the same parameter objects), but not when the
        optimizer already holds state tensors on the old device: `Adagrad` creates its state in the constructor,
        and `optimizer.load_state_dict(...)` places the loaded state next to the parameters as they are at that
        moment; the first `step()` then fails with a device mismatch. `DistributedDataParallel` and
        `torch.compile` keep the parameters, so building the optimizer before them is fine.
    """
    known_problems = """
        The optimizer must be built in the same function as the wrap or the move, from parameters read off the
        code (`model.parameters()`, parameter groups, a list of parameters built earlier in the function) or by a
        factory given the model (`build_optimizer(model, cfg)`), and the wrap must come later in the same pass
        (not in the other arm of an `if`). A wrap is `FullyShardedDataParallel(...)`/`FSDP(...)`/`fully_shard(...)`
        on that model, a part of it, or the module it was built from, called directly or inside a helper of this
        file or a local module that wraps its parameter. An optimizer rebuilt after the wrap silences the
        finding. A move is `.cuda()`/`.to(device)` of that model after building an `Adagrad`, or after
        `optimizer.load_state_dict(...)` on that optimizer, both in the same function; a model that was already
        moved to a device before (so that the later move may change nothing) stays silent, moves to a dtype are
        ignored, and a move after a plain `Adam`/`SGD`/`AdamW` without loaded state is not reported (it is fine
        since PyTorch 0.4).
        Wraps done by frameworks (Accelerate, Lightning, DeepSpeed configuration) are not seen.
    """
    bad = """
        import torch
        import torch.distributed as dist
        from torch import nn
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        dist.init_process_group("nccl")
        torch.cuda.set_device(dist.get_rank())
        model = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024)).cuda()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model = FSDP(model)

        for step in range(100):
            x = torch.randn(8, 1024, device="cuda")
            loss = model(x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    """
    good = """
        import torch
        import torch.distributed as dist
        from torch import nn
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        dist.init_process_group("nccl")
        torch.cuda.set_device(dist.get_rank())
        model = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024)).cuda()
        model = FSDP(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        for step in range(100):
            x = torch.randn(8, 1024, device="cuda")
            loss = model(x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    """
    fires = (
        # fully_shard (FSDP2) in place, after the optimizer.
        """
import torch
from torch.distributed.fsdp import fully_shard
model = Transformer(cfg)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
for block in model.layers:
    fully_shard(block)
fully_shard(model)
""",
        # Adagrad creates its state in the constructor, then the model moves to the GPU.
        """
import torch
model = Net()
optimizer = torch.optim.Adagrad(model.parameters(), lr=0.01)
model.cuda()
""",
        # State loaded before the move.
        """
import torch
model = Net()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
ckpt = torch.load("last.pt", map_location="cpu")
model.load_state_dict(ckpt["model"])
optimizer.load_state_dict(ckpt["optimizer"])
model = model.to(device)
""",
        # A wrapping helper.
        """
import torch
from torch.distributed.fsdp import FullyShardedDataParallel

def shard(module, policy):
    return FullyShardedDataParallel(module, auto_wrap_policy=policy, use_orig_params=True)

def main():
    model = build_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model = shard(model, policy)
""",
    )
    silent = (
        """
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
model = Net().cuda()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model = DDP(model, device_ids=[rank])
model = torch.compile(model)
""",
        # A plain move after building Adam without state: PyTorch moves the same parameter objects.
        """
import torch
model = Net()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
model.to(device)
""",
        # Rebuilt after the wrap.
        """
import torch
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
model = Net()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
if args.fsdp:
    model = FSDP(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
""",
        # Wrap and optimizer in exclusive branches.
        """
import torch
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
model = Net()
if args.fsdp:
    model = FSDP(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
else:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model = model.cuda()
""",
        # The model was on its device before the state was loaded: the later move changes nothing.
        """
import torch
model = Net().to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
optimizer.load_state_dict(torch.load("opt.pt", map_location=device))
model.to(device)
""",
        # A move to a dtype after loading state.
        """
import torch
model = Net()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
optimizer.load_state_dict(torch.load("opt.pt"))
model.to(torch.bfloat16)
""",
    )

    def check(self, ctx):
        text = ctx.source.text
        if not any(w in text for w in ("FSDP", "FullyShardedDataParallel", "fully_shard", "Adagrad", "load_state_dict")):
            return
        m = ctx.model
        optimizers = [(b.key, b.call, b.roots) for b in optimizer_builds(m)]
        if not optimizers:
            return
        seen: set[int] = set()
        for site, wrapped, how in _wraps(m):
            for key, call, roots in optimizers:
                if id(site) in seen or not _related(wrapped, roots) or not runs_after(m.index, call, site):
                    continue
                if _rebuilt(m, key, site):
                    continue
                seen.add(id(site))
                yield self.finding(
                    ctx,
                    site,
                    f"{_label(key)} is built on line {call.lineno} from the parameters of `{_root(wrapped, roots)}`, before "
                    f"{how} replaces them with new flattened/sharded tensors: the optimizer updates tensors the model "
                    "no longer uses; build the optimizer after the wrap, from the wrapped model's parameters",
                )
        for site, moved in _moves(m):
            for key, call, roots in optimizers:
                if id(site) in seen or not _related(moved, roots) or not runs_after(m.index, call, site):
                    continue
                state = _state_before(m, key, call, site)
                if state is None or _rebuilt(m, key, site) or _moved_before(m, moved, state[1]):
                    continue
                seen.add(id(site))
                yield self.finding(
                    ctx,
                    site,
                    f"`{ctx.segment(site) or 'the move'}` moves `{moved}` to another device after {_label(key)} (line {call.lineno}) "
                    f"{state[0]}: that state stays on the old device and the first `step()` fails with a device mismatch; "
                    "move the model first, then build the optimizer and load its state",
                )


def _label(key: str) -> str:
    return f"`{key}`" if key else "the optimizer"


def _wraps(m) -> Iterator[tuple[ast.AST, str, str]]:
    """``(call, wrapped module key, description)`` for each sharding wrap: direct, or through a helper."""
    for call in m.index.of(ast.Call):
        name = (m.imports.qualify(call.func) or "").rsplit(".", 1)[-1]
        if name in _SHARDING_WRAPPERS:
            arg = call.args[0] if call.args else next((kw.value for kw in call.keywords if kw.arg == "module"), None)
            key = receiver_key(arg) if arg is not None else None
            if key:
                yield call, key, f"`{ast.unparse(call.func)}({key})` (line {call.lineno})"
            continue
        found = m.resolve(call.func) if isinstance(call.func, (ast.Name, ast.Attribute)) else None
        if found is None or not isinstance(found[1], (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        program, fn = found
        param = _wrapped_parameter(program, fn)
        if param is None:
            continue
        arg = _argument(fn, call, param)
        key = receiver_key(arg) if arg is not None else None
        if key:
            where = f"line {fn.lineno}" if program is m else f"{os.path.basename(program.path or '')}:{fn.lineno}"
            yield call, key, f"`{ast.unparse(call.func)}({key}, ...)` (line {call.lineno}), which wraps it with FSDP ({where}),"


def _wrapped_parameter(program, fn: ast.AST) -> Optional[str]:
    """The parameter of ``fn`` that it hands to a sharding wrapper, if any."""
    params = {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs}  # type: ignore[attr-defined]
    for call in program.index.within(fn, ast.Call):
        name = (program.imports.qualify(call.func) or "").rsplit(".", 1)[-1]
        if name in _SHARDING_WRAPPERS:
            arg = call.args[0] if call.args else next((kw.value for kw in call.keywords if kw.arg == "module"), None)
            if isinstance(arg, ast.Name) and arg.id in params and not program.rebinds(fn, arg.id):
                return arg.id
    return None


def _argument(fn: ast.AST, call: ast.Call, param: str) -> Optional[ast.AST]:
    for kw in call.keywords:
        if kw.arg == param:
            return kw.value
    positional = [a.arg for a in fn.args.posonlyargs + fn.args.args]  # type: ignore[attr-defined]
    if positional[:1] in (["self"], ["cls"]) and isinstance(call.func, ast.Attribute):
        positional = positional[1:]
    if param in positional:
        i = positional.index(param)
        if i < len(call.args) and not any(isinstance(a, ast.Starred) for a in call.args[: i + 1]):
            return call.args[i]
    return None


def _moves(m) -> Iterator[tuple[ast.Call, str]]:
    """``(call, module key)`` for ``model.cuda()`` / ``model.to(device)`` used as a statement or assigned back."""
    for call in m.index.of(ast.Call):
        f = call.func
        if not (isinstance(f, ast.Attribute) and f.attr in _DEVICE_MOVES):
            continue
        key = receiver_key(f.value)
        if not key:
            continue
        parent = m.index.parent(call)
        if not isinstance(parent, (ast.Expr, ast.Assign)):
            continue
        if f.attr == "to" and not _device_argument(call):
            continue
        yield call, key


def _device_argument(call: ast.Call) -> bool:
    """``.to(device)``, ``.to("cuda")``, ``.to(device=...)``; not ``.to(torch.float16)`` or ``.to(dtype=...)``."""
    if any(kw.arg in ("dtype", "memory_format") for kw in call.keywords):
        return False
    arg = call.args[0] if call.args else next((kw.value for kw in call.keywords if kw.arg == "device"), None)
    if arg is None:
        return False
    text = ast.unparse(arg)
    if "dtype" in text or text.startswith("torch.") and text.rsplit(".", 1)[-1] in (
        "float16", "bfloat16", "float32", "float64", "half", "float", "double", "int8",
    ):
        return False
    return True


def _related(module: str, roots: frozenset[str]) -> bool:
    """Is ``module`` one of ``roots``, a part of one, or a whole one of them is part of?"""
    return any(module == r or r.startswith(module + ".") or module.startswith(r + ".") for r in roots)


def _root(module: str, roots: frozenset[str]) -> str:
    return next((r for r in sorted(roots) if module == r or r.startswith(module + ".") or module.startswith(r + ".")), module)


def _rebuilt(m, key: str, site: ast.AST) -> bool:
    """Is the optimizer bound again to a new constructor after ``site``, in the same pass?"""
    for info in m.objects.history.get(key, []):
        if isinstance(info.node, ast.Call) and runs_after(m.index, site, info.node):
            return True
    return False


def _state_before(m, key: str, ctor: ast.Call, site: ast.AST) -> Optional[tuple[str, ast.AST]]:
    """Why the optimizer holds state tensors before the move, and where it got them; None when it holds none."""
    name = (m.imports.qualify(ctor.func) or "").rsplit(".", 1)[-1]
    if name in _EAGER_STATE:
        return f"is built as `{name}`, which creates its state tensors in the constructor", ctor
    for call in m.index.of(ast.Call):
        f = call.func
        if isinstance(f, ast.Attribute) and f.attr == "load_state_dict" and receiver_key(f.value) == key:
            if runs_after(m.index, ctor, call) and runs_after(m.index, call, site):
                stmt = statement(m.index, call)
                return f"loaded its state on line {getattr(stmt, 'lineno', call.lineno)}", call
    return None


def _moved_before(m, module: str, before: ast.AST) -> bool:
    """Was the model already moved to a device before ``before`` (so that the later move may change nothing)?"""
    for call, key in _moves(m):
        if key == module and runs_after(m.index, call, before):
            return True
    for node in m.index.of(ast.Assign):
        if not any(receiver_key(t) == module for t in node.targets) or not runs_after(m.index, node, before):
            continue
        for sub in ast.walk(node.value):
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr in _DEVICE_MOVES:
                return True
    return False
