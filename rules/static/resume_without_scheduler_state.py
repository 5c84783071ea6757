"""resume-without-scheduler-state: a resume restores the optimizer but the LR schedule starts over."""

from __future__ import annotations

import ast
import re

from doctor.analysis import objects as K
from doctor.analysis.names import receiver_key
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

#: Helpers that save or restore several objects at once (they may take care of the scheduler).
_POSITION = re.compile(r"start|resume|last|global_step|init_step|offset|begin|current|completed|done", re.I)
_CHECKPOINT_HELPER = re.compile(r"save|load|checkpoint|ckpt|resume|restore|state", re.I)


class ResumeWithoutSchedulerState(Rule):
    whole_file = True  # the scheduler state may be saved or loaded anywhere in the file
    name = "resume-without-scheduler-state"
    code = "DR901"
    severity = Severity.WARNING
    summary = "A checkpoint restore loads the optimizer state, but the LR scheduler's state is neither saved nor loaded."
    why = """
        On resume the optimizer continues where it stopped, but a freshly built scheduler starts its schedule
        from step 0: warm-up runs again on a trained model (a loss spike), and cosine or step decays are
        shifted by the whole resumed length, so the run ends at the wrong learning rate. Save
        `scheduler.state_dict()` with the checkpoint and `load_state_dict` it on resume (or rebuild it with
        `last_epoch=`, or step it forward to the resumed position).
    """
    known_problems = """
        Needs a scheduler constructed in the file and a `load_state_dict(...)` call on an object doctor takes
        for an optimizer (built as one, or named like one). A scheduler is judged by its constructor, never by
        the variable's name: a factory of another package named like one (`build_lr_scheduler(cfg, opt)`) counts
        only when something that may be an optimizer is handed to it (a timestep `schedule_sampler` or a noise
        schedule is not an LR scheduler), and a project's own factory or class is read to see what it builds. Anything that may restore or position the scheduler
        silences it: its `state_dict()`/`load_state_dict()` called anywhere in the file (also through a loop
        variable over a collection of schedulers), `last_epoch=`, `**kwargs` or more than three positional
        arguments in its constructor, a constructor argument named like `start`/`resume`/`global_step`,
        `step(n)` with an argument, a loop that only steps schedulers (a fast-forward), the scheduler passed to
        a helper named like `save`/`load`/`checkpoint`, or placed in a dict, list or tuple (a checkpoint being
        assembled). A `load_state_dict` inside a method named like `*state*` (a wrapper delegating to its
        optimizer) is not reported, nor one given the live state of an optimizer of the same run
        (`new_opt.load_state_dict(opt.state_dict())`, resharding). A scheduler handled by code in another file it
        is not passed to is not seen.
    """
    bad = """
        import torch
        from torch import nn
        from torch.optim.lr_scheduler import CosineAnnealingLR

        model = nn.Linear(20, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scheduler = CosineAnnealingLR(optimizer, T_max=100)


        def save(path):
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)


        def resume(path):
            ckpt = torch.load(path)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
    """
    good = """
        import torch
        from torch import nn
        from torch.optim.lr_scheduler import CosineAnnealingLR

        model = nn.Linear(20, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scheduler = CosineAnnealingLR(optimizer, T_max=100)


        def save(path):
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict()}, path)


        def resume(path):
            ckpt = torch.load(path)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
    """
    fires = (
        """
import os
import torch
from transformers import get_linear_schedule_with_warmup
def train(args, model, train_dataloader):
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
    if os.path.isfile(os.path.join(args.model_name_or_path, "optimizer.pt")):
        optimizer.load_state_dict(torch.load(os.path.join(args.model_name_or_path, "optimizer.pt")))
    for batch in train_dataloader:
        model(**batch).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    torch.save(optimizer.state_dict(), os.path.join(args.output_dir, "optimizer.pt"))
""",
        """
import torch
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
start_epoch = 0
if args.resume:
    ckpt = torch.load(args.resume)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    start_epoch = ckpt["epoch"] + 1
for epoch in range(start_epoch, 100):
    train_one_epoch(model, loader, optimizer)
    scheduler.step()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, "ckpt.pt")
""",
    )
    silent = (
        """
import torch
from transformers import get_linear_schedule_with_warmup
optimizer = torch.optim.AdamW(model.parameters())
ckpt = torch.load(path)
optimizer.load_state_dict(ckpt["optimizer"])
start_step = ckpt["step"]
scheduler = get_linear_schedule_with_warmup(optimizer, 0, total_steps - start_step)
""",
        """
import torch
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 30)
optimizer.load_state_dict(torch.load(path)["optimizer"])
for epoch in range(start, 90):
    train(epoch)
    scheduler.step(epoch)
""",
        """
import torch
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
if args.resume:
    ckpt = torch.load(args.resume)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
""",
        """
import torch
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 30)
ckpt = torch.load(path)
optimizer.load_state_dict(ckpt["optimizer"])
start = ckpt["epoch"]
for _ in range(start):
    scheduler.step()
""",
        """
import torch
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
ckpt = torch.load(path)
optimizer.load_state_dict(ckpt["optimizer"])
start = ckpt["epoch"]
scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [30, 60], last_epoch=start - 1)
""",
        """
import torch
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
ckpt = torch.load(path)
optimizer.load_state_dict(ckpt["optimizer"])
""",
        """
import torch
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 30)
load_checkpoint(path, model, optimizer, scheduler)
optimizer.load_state_dict(extra["optimizer"])
""",
    )

    def check(self, ctx):
        if "load_state_dict" not in ctx.source.text:
            return
        m = ctx.model
        schedulers = {
            key: info for key, info in (
                (k, m.objects.get(k)) for k, raw in list(m.objects.objects.items()) if raw.kind == K.SCHEDULER
            )
            if info is not None and info.kind == K.SCHEDULER and not info.from_name_only and _constructed(m, info.node)
        }
        if not schedulers:
            return
        calls = [n for n in m.index.scan(ast.Call) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
        for call in calls:
            if call.func.attr != "load_state_dict":  # type: ignore[attr-defined]
                continue
            opt = receiver_key(call.func.value)  # type: ignore[attr-defined]
            if m.objects.kind(opt) != K.OPTIMIZER:
                continue
            if "state" in getattr(m.enclosing_function(call), "name", ""):
                continue  # a wrapper's own load_state_dict delegating to the optimizer it wraps
            if _live_state(m, call):
                continue  # the state of an optimizer of this run (resharding, a copy): not a checkpoint resume
            forgotten = [
                key for key, info in schedulers.items()
                if m.scheduler_drives(key, opt) and not _state_handled(m, key, info, calls)
            ]
            if forgotten:
                key = forgotten[0]
                yield self.finding(
                    ctx,
                    call,
                    f"the optimizer state is restored here but `{key}` is neither saved nor loaded: after resuming the "
                    f"learning-rate schedule restarts from step 0; save `{key}.state_dict()` and call `{key}.load_state_dict(...)`",
                )


def _state_handled(m, key, info, calls) -> bool:
    ctor = info.node
    if any(kw.arg == "last_epoch" or kw.arg is None for kw in ctor.keywords) or len(ctor.args) > 3:
        return True  # positioned explicitly, or unknown keyword arguments
    if any(isinstance(n, ast.Name) and _POSITION.search(n.id) for n in ast.walk(ctor)):
        return True  # built from the resumed position (`total_steps - start_step`, `lambda s: f(s + start)`)
    names = _loop_aliases(m, _aliases(key))
    for call in calls:
        attr = call.func.attr
        recv = receiver_key(call.func.value)
        if recv in names and attr in ("load_state_dict", "state_dict"):
            return True
        if recv in names and attr == "step" and _fast_forward(m, call):
            return True
        if recv in names and "step" in attr and (call.args or call.keywords):
            return True  # `scheduler.step(epoch)` / `step_update(num_updates)`: positioned on every call
    for node in m.index.all():
        if isinstance(node, ast.Call):
            fname = node.func.id if isinstance(node.func, ast.Name) else node.func.attr if isinstance(node.func, ast.Attribute) else ""
            if _CHECKPOINT_HELPER.search(fname) and any(receiver_key(a) in names for a in _all_args(node)):
                return True
        if isinstance(node, (ast.Dict, ast.List, ast.Tuple, ast.Set)):
            values = node.values if isinstance(node, ast.Dict) else node.elts
            if any(receiver_key(v) in names for v in values if v is not None):
                return True  # handed over in a collection (`for obj in (model, opt, sched): ...`)
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Attribute) and t.attr in ("last_epoch", "_step_count") and receiver_key(t.value) in names for t in targets):
                return True
    return False


def _live_state(m, call: ast.Call) -> bool:
    """``new_opt.load_state_dict(opt.state_dict())``, or through a name the same function assigned from one: the
    state handed over comes from an object of this run, not from a checkpoint."""
    if not call.args:
        return False
    arg = call.args[0]
    if isinstance(arg, ast.Name):
        binds = m.values.bindings(m.enclosing_function(call)).get(arg.id, [])
        if len(binds) != 1 or not isinstance(binds[0], ast.Assign) or not isinstance(binds[0].targets[0], ast.Name):
            return False
        arg = binds[0].value
    return (
        isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr == "state_dict"
        and not arg.args and m.objects.kind(receiver_key(arg.func.value)) == K.OPTIMIZER
    )


def _constructed(m, node) -> bool:
    """A scheduler built here: not the result of a method call on one (``new_lr = sched.step_update(n)``)."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute):
        recv = receiver_key(func.value) or ""
        if recv.split(".")[0] not in m.imports.aliases and m.objects.kind(recv) == K.SCHEDULER:
            return False
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name[:1].isupper() or bool(re.search(r"sched", name, re.I))


def _aliases(key: str) -> set[str]:
    """``self._lr_scheduler`` is also reached as ``self.lr_scheduler`` (a property) or ``lr_scheduler``."""
    last = key.rsplit(".", 1)[-1]
    bare = last.lstrip("_")
    return {key, last, bare, f"self.{bare}", f"self._{bare}"}


def _loop_aliases(m, names: set[str]) -> set[str]:
    """Names that iterate a collection of ``names``: ``for scheduler, ckpt in zip(self.param_schedulers, ...)``,
    ``for name, schedulers in self.param_schedulers.items()`` (and loops over those in turn)."""
    names = set(names)
    loops = m.nodes(ast.For, ast.AsyncFor, ast.comprehension)
    for _ in range(3):
        grown = False
        for loop in loops:
            if any(receiver_key(n) in names for n in ast.walk(loop.iter) if isinstance(n, (ast.Name, ast.Attribute))):
                for n in ast.walk(loop.target):
                    if isinstance(n, ast.Name) and n.id not in names:
                        names.add(n.id)
                        grown = True
        if not grown:
            break
    return names


def _all_args(call: ast.Call) -> list[ast.AST]:
    return list(call.args) + [kw.value for kw in call.keywords]


def _fast_forward(m, call) -> bool:
    """``for _ in range(start): scheduler.step()``: a loop that does nothing but step schedulers."""
    cur = m.parents.get(id(call))
    while cur is not None:
        if isinstance(cur, ast.For) and isinstance(cur.iter, ast.Call) and getattr(cur.iter.func, "id", "") == "range":
            body_calls = [n for stmt in cur.body for n in ast.walk(stmt) if isinstance(n, ast.Call)]
            if all(
                isinstance(n.func, ast.Attribute) and m.objects.kind(receiver_key(n.func.value)) == K.SCHEDULER
                for n in body_calls
            ):
                return True  # the loop only steps schedulers: a fast-forward to the resumed position
        cur = m.parents.get(id(cur))
    return False
