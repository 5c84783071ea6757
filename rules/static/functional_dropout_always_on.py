"""functional-dropout-always-on: F.dropout in a module without training=self.training stays on in eval."""

from __future__ import annotations

import ast
import re

from doctor.core.findings import Applicability, Edit, Fix, Severity
from doctor.analysis.guards import is_training_flag, runs_only_if
from doctor.lint.rule import Rule

#: Functional dropouts whose ``training`` parameter defaults to True, with its positional index.
#: (``alpha_dropout`` and ``feature_alpha_dropout`` default to ``training=False``: not this bug.)
_DROPOUTS = {"dropout": 2, "dropout1d": 2, "dropout2d": 2, "dropout3d": 2}
_NS = {"torch.nn.functional", "F", "nn.functional", "functional"}
#: A comment on the call's line saying the dropout is meant to stay on.
_INTENT = re.compile(
    r"always (on|appl|use|drop|active|enabled)|(at|in|during) (inference|eval|test)|monte carlo|\bmc[ _-]dropout"
    r"|on purpose|intentional|deliberate",
    re.I,
)


class FunctionalDropoutAlwaysOn(Rule):
    name = "functional-dropout-always-on"
    code = "DR506"
    severity = Severity.ERROR
    fixable = Applicability.UNSAFE
    summary = "`F.dropout(x, p)` inside an nn.Module without `training=self.training` also drops units in eval mode."
    why = """
        Unlike `nn.Dropout`, the functional `F.dropout` does not look at the module's mode: its `training`
        argument defaults to True. Inside a module's `forward`, `model.eval()` therefore leaves dropout on, so
        validation scores are noisy and pessimistic, predictions are not deterministic, and the deployed model is
        worse than the one you measured. Pass `training=self.training`, or use an `nn.Dropout` submodule.
    """
    known_problems = """
        Reported only inside a method of a class defined in the file that is an `nn.Module` (its bases lead to
        torch's `Module`), for `dropout`, `dropout1d/2d/3d` from `torch.nn.functional` called without a
        `training` argument (keyword, positional or `**kwargs`): an explicit `training=True` (Monte Carlo
        dropout) is a decision. Also silent for a literal `p=0` and for a call whose line carries a comment
        saying it is meant to stay on (`# always applies dropout`, as in Tacotron 2's prenet), and for a call
        that only runs in training mode (`if self.training:`, an early return in eval mode, a conditional
        expression on `self.training`). Dropout in a free function called from a module's `forward`, in a module
        whose base class comes from another file or library doctor cannot read, or written as `torch.dropout(x,
        p, train)` is not checked. `alpha_dropout` is not reported: its `training` defaults to False.
    """
    bad = """
        import torch
        import torch.nn.functional as F
        from torch import nn


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = nn.Linear(20, 64)
                self.fc2 = nn.Linear(64, 2)

            def forward(self, x):
                x = F.dropout(F.relu(self.fc1(x)), p=0.5)
                return self.fc2(x)
    """
    good = """
        import torch
        import torch.nn.functional as F
        from torch import nn


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = nn.Linear(20, 64)
                self.fc2 = nn.Linear(64, 2)

            def forward(self, x):
                x = F.dropout(F.relu(self.fc1(x)), p=0.5, training=self.training)
                return self.fc2(x)
    """
    fixed = """
        import torch
        import torch.nn.functional as F
        from torch import nn


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = nn.Linear(20, 64)
                self.fc2 = nn.Linear(64, 2)

            def forward(self, x):
                x = F.dropout(F.relu(self.fc1(x)), p=0.5, training=self.training)
                return self.fc2(x)
    """
    fix_safety = """
        The fix appends `training=self.training` to the call. It is unsafe because evaluation results change:
        after `model.eval()` the layer stops dropping units, so validation scores and exported predictions
        differ from before (that is the intended effect, but numbers people compared against move). A model that
        relied on dropout at inference (Monte Carlo dropout) should pass `training=True` instead. The fix is
        offered only in methods whose first parameter is `self`.
    """
    fires = (
        """
import torch.nn as nn
import torch.nn.functional as F
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 256)
        self.fc2 = nn.Linear(256, 10)
    def forward(self, x):
        x = F.dropout(F.relu(self.fc1(x)), 0.5)
        return self.fc2(x)
""",
        """
import torch
from torch import nn
from torch.nn import functional as F
class Block(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p
    def forward(self, x):
        return F.dropout2d(x, p=self.p)
""",
    )
    silent = (
        """
import torch.nn as nn
import torch.nn.functional as F
class SNN(nn.Module):
    def forward(self, x):
        return F.alpha_dropout(F.selu(x), p=0.1)  # training defaults to False here
""",
        """
import torch.nn as nn
import torch.nn.functional as F
class Net(nn.Module):
    def forward(self, x):
        x = F.dropout(x, p=0.5, training=self.training)
        x = F.dropout(x, 0.1, self.training)
        return F.dropout(x, p=0.2, training=True)  # Monte Carlo dropout, on purpose
""",
        """
import torch.nn.functional as F
def augment(x):
    return F.dropout(x, 0.1)
""",
        """
import torch.nn as nn
import torch.nn.functional as F
class Net(nn.Module):
    def forward(self, x):
        return F.dropout(x, p=0.0)
""",
    )

    def check(self, ctx):
        m = ctx.model
        for call in m.nodes(ast.Call):
            q = m.imports.qualify(call.func) or ""
            ns, _, name = q.rpartition(".")
            if ns not in _NS or name not in _DROPOUTS:
                continue
            if len(call.args) > _DROPOUTS[name] or any(kw.arg in ("training", None) for kw in call.keywords):
                continue
            if any(isinstance(a, ast.Starred) for a in call.args) or _zero_p(call):
                continue
            if _INTENT.search(ctx.lines[call.lineno - 1].partition("#")[2]):
                continue  # the line's comment says it is on purpose (Tacotron's prenet, MC dropout)
            if runs_only_if(m.index, call, is_training_flag):
                continue  # `if self.training: x = F.dropout(x, p)`: off in eval mode by the guard
            fn = m.enclosing_function(call)
            cls = m.class_of(fn)
            if cls is None or not m.values.is_local_module_class(cls):
                continue
            yield self.finding(
                ctx,
                call,
                f"`{ctx.segment(call.func)}` without `training=self.training` keeps dropping units after `model.eval()`: "
                "pass `training=self.training` (or use an nn.Dropout submodule)",
                fix=_fix(ctx, call, fn),
            )


def _zero_p(call: ast.Call) -> bool:
    p = call.args[1] if len(call.args) > 1 else next((kw.value for kw in call.keywords if kw.arg == "p"), None)
    return isinstance(p, ast.Constant) and p.value == 0


def _fix(ctx, call: ast.Call, fn: ast.AST):
    """Insert ``, training=self.training`` after the last argument."""
    args = getattr(fn, "args", None)
    first = (args.posonlyargs + args.args)[0].arg if args is not None and (args.posonlyargs + args.args) else None
    if first != "self":
        return None
    last = max(list(call.args) + [kw.value for kw in call.keywords], key=lambda n: (n.end_lineno, n.end_col_offset), default=None)
    if last is None:
        return None
    line, col = last.end_lineno, ctx.char_column(last.end_lineno, last.end_col_offset)
    edit = Edit(line, col, line, col, ", training=self.training")
    return Fix("pass training=self.training", Applicability.UNSAFE, (edit,))
