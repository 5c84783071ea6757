"""lr-out-of-range: a literal learning rate that cannot be right for the optimizer it is given to."""

from __future__ import annotations

import ast
import re
from typing import Iterator, Optional

from doctor.analysis import objects as K
from doctor.analysis.values import literal_number
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

#: Adaptive optimizers normalise the step by the gradient's RMS: the LR is (roughly) the step size itself.
ADAPTIVE = {"Adam", "AdamW", "RMSprop", "Adagrad", "NAdam", "RAdam"}
HIGH = 0.1
#: Schedulers that *multiply* the base LR by a user function or replace it: the base LR is not the LR.
_REPLACING_SCHEDULERS = {"LambdaLR", "MultiplicativeLR", "OneCycleLR", "CyclicLR"}
_TORCH_SCHEDULERS_PREFIX = ("torch.optim.lr_scheduler.", "transformers.")


class LrOutOfRange(Rule):
    name = "lr-out-of-range"
    code = "DR802"
    severity = Severity.ERROR
    summary = "A literal learning rate of 0.1 or more for an adaptive optimizer (Adam, AdamW, RMSprop...), or an LR <= 0."
    why = """
        Adam-family optimizers take steps of about `lr` in every coordinate regardless of the gradient's scale,
        so `lr=0.1` or more moves every weight by that much per step: the loss explodes or becomes NaN within a
        few iterations (typical values are 1e-5..3e-3). The number is usually copied from an SGD recipe, where
        0.1 is standard. A learning rate of zero or below never trains (or climbs the loss).
    """
    known_problems = """
        Reported only for torch optimizers with a learning rate doctor can read as a number (a literal or a
        module constant, by keyword, by position or in a parameter group written as a dict); a value from a
        config or the command line is not checked. The high bound (0.1) applies to Adam, AdamW, RMSprop,
        Adagrad, NAdam and RAdam only, not to SGD (linear probes use LRs like 30), Adadelta (default 1.0) or
        LBFGS; a learning rate of zero or below is reported for every torch optimizer. Stays silent when the
        file writes learning rates itself (`param_group["lr"] = ...`), when a scheduler that treats the base LR
        as a multiplier (`LambdaLR`, `MultiplicativeLR`, `OneCycleLR`, `CyclicLR`) or a scheduler that is not
        torch's or transformers' is built, for rates tuned per parameter group (several groups with different
        literal rates, or a group holding only embedding tables), and in files importing gpytorch, botorch or
        pyro, whose few-parameter fits use Adam at 0.1 on purpose.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)

        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    """
    good = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    """
    fires = (
        """
import torch
optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
""",
        """
import torch.optim as optim
LR = 0.5
optimizer = optim.RMSprop(model.parameters(), LR)
""",
        """
import torch
optimizer = torch.optim.SGD(model.parameters(), lr=0, momentum=0.9)
for x, y in loader:
    optimizer.zero_grad()
    loss_fn(model(x), y).backward()
    optimizer.step()
""",
    )
    silent = (
        """
import torch
import gpytorch
likelihood = gpytorch.likelihoods.GaussianLikelihood()
optimizer = torch.optim.Adam(model.parameters(), lr=0.1)  # the documented GP recipe
""",
        """
import torch
a = torch.optim.SGD(probe.parameters(), lr=30.0, momentum=0.9)
b = torch.optim.Adadelta(model.parameters(), lr=1.0)
c = torch.optim.LBFGS(model.parameters(), lr=1)
d = torch.optim.Adam(model.parameters(), lr=3e-4)
e = torch.optim.AdamW(model.parameters(), lr=args.lr)
""",
        """
import torch
optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda step: rate(step, 512, 1.0, 4000))
""",
        """
import torch
optimizer = torch.optim.SGD(params_groups, lr=0, momentum=0.9)
for it, batch in enumerate(loader):
    for i, param_group in enumerate(optimizer.param_groups):
        param_group["lr"] = lr_schedule[it]
""",
    )

    def check(self, ctx):
        m = ctx.model
        rewritten = _lr_rewritten(m)
        for call in m.nodes(ast.Call):
            q = m.imports.qualify(call.func) or ""
            parts = q.split(".")
            name = parts[-1]
            if parts[0] != "torch" or "optim" not in parts or name not in K._TORCH_OPTIMIZERS:
                continue
            if rewritten:
                continue
            tuned = _per_group_rates(m, call)
            for node, value in _learning_rates(call):
                lr = literal_number(m, value)
                if lr is None:
                    continue
                if id(value) in tuned:
                    continue  # a group's own, deliberately tuned rate (0.6 for embedding tables in a speed-run)
                if lr <= 0 and not _unknown_scheduler(m):
                    msg = (
                        f"learning rate {lr:g} for {name}: "
                        + ("the weights never change" if lr == 0 else "every step climbs the loss instead of descending it")
                    )
                elif name in ADAPTIVE and lr >= HIGH and not _multiplied(m, call) and not _few_parameter_fit(m):
                    msg = (
                        f"learning rate {lr:g} for {name}, an adaptive optimizer whose steps are about lr in every "
                        "weight: this diverges (typical: 1e-5..3e-3; 0.1 is an SGD value)"
                    )
                else:
                    continue
                yield self.finding(ctx, node, msg)
                break


#: Libraries whose documented recipes fit a handful of hyperparameters (GP kernels, probabilistic
#: programs) with Adam at lr=0.1: there it converges, and a linter that says otherwise is wrong.
_FEW_PARAMETER_LIBRARIES = ("gpytorch", "botorch", "pyro", "numpyro", "linear_operator")


def _few_parameter_fit(m) -> bool:
    return any(v.split(".")[0] in _FEW_PARAMETER_LIBRARIES for v in m.imports.aliases.values())


_EMBEDDING = re.compile(r"emb|wte|wpe|vte|lookup", re.I)


def _per_group_rates(m, call: ast.Call) -> set[int]:
    """Ids of learning rates set per parameter group when the groups are tuned one by one: several groups
    with different literal rates, or a group that holds only embedding tables (lookups take large steps)."""
    groups = call.args[0] if call.args else next((kw.value for kw in call.keywords if kw.arg == "params"), None)
    if isinstance(groups, ast.Name):
        groups = m.values.value_of(groups)
    if not isinstance(groups, (ast.List, ast.Tuple)):
        return set()
    if groups.elts and all(not isinstance(g, (ast.Dict, ast.Call)) and _EMBEDDING.search(ast.unparse(g)) for g in groups.elts):
        # `Adam([wte.weight, vte.weight], lr=0.6)`: an optimizer of embedding tables only (a speed-run setting).
        return {id(v) for v in K.optimizer_hyperparameter(call, "lr", 1)}
    rates: list[tuple[ast.AST, Optional[float], str]] = []
    for g in groups.elts:
        entries = {}
        if isinstance(g, ast.Dict):
            entries = {k.value: v for k, v in zip(g.keys, g.values) if isinstance(k, ast.Constant)}
        elif isinstance(g, ast.Call) and isinstance(g.func, ast.Name) and g.func.id == "dict":
            entries = {kw.arg: kw.value for kw in g.keywords if kw.arg}
        if "lr" in entries:
            rates.append((entries["lr"], literal_number(m, entries["lr"]), ast.unparse(entries.get("params", ast.Constant(None)))))
    distinct = {r for _, r, _ in rates if r is not None}
    out = set()
    for value, _, params in rates:
        if len(distinct) > 1 or _EMBEDDING.search(params):
            out.add(id(value))
    return out


def _learning_rates(call: ast.Call) -> Iterator[tuple[ast.AST, ast.AST]]:
    for value in K.optimizer_hyperparameter(call, "lr", 1):
        yield value, value
    groups = call.args[0] if call.args else next((kw.value for kw in call.keywords if kw.arg == "params"), None)
    if isinstance(groups, (ast.List, ast.Tuple)):
        for g in groups.elts:  # `dict(params=..., lr=0.6)` groups (dict literals are read above)
            if isinstance(g, ast.Call) and isinstance(g.func, ast.Name) and g.func.id == "dict":
                for kw in g.keywords:
                    if kw.arg == "lr":
                        yield kw.value, kw.value


def _lr_rewritten(m) -> bool:
    """Does the file set learning rates itself (``param_group["lr"] = ...``)?"""
    for node in m.nodes(ast.Subscript):
        if isinstance(node.ctx, ast.Store) and isinstance(node.slice, ast.Constant) and node.slice.value in ("lr", "initial_lr"):
            return True
    return False


def _multiplied(m, call: ast.Call) -> bool:
    """Is some scheduler in the file one that treats the base LR as a multiplier (or one we do not know)?"""
    return _unknown_scheduler(m) or any(
        info.kind == K.SCHEDULER and info.ctor_name in _REPLACING_SCHEDULERS for info in m.objects.objects.values()
    )


def _unknown_scheduler(m) -> bool:
    """A scheduler not from torch or transformers: it may set the learning rate any way it likes."""
    return any(
        info.kind == K.SCHEDULER and not info.ctor.startswith(_TORCH_SCHEDULERS_PREFIX) for info in m.objects.objects.values()
    )
