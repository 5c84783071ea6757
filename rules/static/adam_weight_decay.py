"""adam-weight-decay: torch.optim.Adam with weight_decay > 0 (L2 in the gradient) where AdamW is meant."""

from __future__ import annotations

import ast

from doctor.analysis import objects as K
from doctor.analysis.values import literal_number
from doctor.core.findings import Severity
from doctor.lint.rule import Rule

#: Positional index of ``weight_decay`` in ``Adam(params, lr, betas, eps, weight_decay, ...)``.
_WD_INDEX = 4


class AdamWeightDecay(Rule):
    name = "adam-weight-decay"
    code = "DR801"
    severity = Severity.WARNING
    summary = "`torch.optim.Adam` is given weight_decay > 0: that is an L2 penalty scaled by Adam, not decoupled weight decay."
    why = """
        `Adam(weight_decay=wd)` adds `wd * w` to the gradient, which Adam then divides by its running RMS of
        gradients: weights with large gradients are barely regularised and the effective decay changes during
        training. That is not the weight decay of the papers and recipes people copy hyper-parameters from
        (BERT, ViT, GPT...), which use decoupled decay: `torch.optim.AdamW`. With the same number, Adam+L2 usually
        generalises worse. Use `AdamW` (or `Adam(..., decoupled_weight_decay=True)`), re-tuning the value
        (AdamW decays by `lr * wd` per step, so typical values are larger: 0.01-0.1).
    """
    known_problems = """
        Reported only for `torch.optim.Adam` (however it is imported) with a weight decay doctor can read as a
        number greater than zero: a literal or a module constant, given by keyword, by position, or in a
        parameter-group dict. A value read from a config or the command line is not checked, nor is Adam from
        other libraries (apex, bitsandbytes). `decoupled_weight_decay=True` turns the finding off. A project
        that chose L2-regularised Adam on purpose (to reproduce an older paper) gets this warning too: suppress
        it on that line.
    """
    bad = """
        import torch
        from torch import nn

        model = nn.Linear(20, 2)
        loss_fn = nn.CrossEntropyLoss()
        loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(16)]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)

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
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    """
    fires = (
        """
import torch
optimizer = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=1e-4)
""",
        """
from torch.optim import Adam
WEIGHT_DECAY = 5e-4
opt = Adam([{"params": backbone.parameters(), "weight_decay": WEIGHT_DECAY}, {"params": head.parameters()}], lr=1e-3)
""",
    )
    silent = (
        """
import torch
a = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=0)
b = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
c = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True)
d = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=args.wd)
""",
        """
import torch
import apex
opt = apex.optimizers.FusedAdam(model.parameters(), lr=1e-3, weight_decay=0.01)
""",
    )

    def check(self, ctx):
        m = ctx.model
        for call in m.nodes(ast.Call):
            q = m.imports.qualify(call.func) or ""
            parts = q.split(".")
            if parts[-1] != "Adam" or parts[0] != "torch":
                continue
            if any(kw.arg == "decoupled_weight_decay" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False) for kw in call.keywords):
                continue
            for node, value in _weight_decays(call):
                wd = literal_number(m, value)
                if wd is not None and wd > 0:
                    yield self.finding(
                        ctx,
                        node,
                        f"Adam with weight_decay={wd:g} adds an L2 term to the gradient that Adam rescales per weight; "
                        "decoupled weight decay is `torch.optim.AdamW`",
                    )
                    break


def _weight_decays(call: ast.Call):
    """(node to report, value) for each weight_decay given: keyword, positional, or in a param-group dict."""
    for value in K.optimizer_hyperparameter(call, "weight_decay", _WD_INDEX):
        yield value, value


