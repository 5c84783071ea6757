"""Targeted tests for epoch-scheduler-stepped-per-batch, softmax-over-batch-dim, optimizer-before-model-wrap,
submodules-in-plain-list, params-missing-from-optimizer and accum-loss-per-token-normalisation, and for the
analysis they stand on (doctor.analysis.schedules, shapes, order, modules): units of a horizon, ranks and batch
dimensions, statement order, parameter roots and module attributes, severities, report locations and the fix."""

import ast
import textwrap

import pytest

from doctor.analysis.model import TrainingModel
from doctor.analysis.modules import LAYER, PARAMETER, PASSED, PLAIN, ModuleTables, frozen_keys, optimizer_builds, parameter_roots
from doctor.analysis.order import exclusive, runs_after
from doctor.analysis.schedules import EPOCHS, LITERAL, STEPS, horizon_unit, is_epoch_loop, iterates_batches
from doctor.analysis.shapes import Shapes
from doctor.core.findings import Severity
from doctor.lint.config import Settings
from doctor.lint.fixer import fix_file
from doctor.lint.registry import lookup, select_rules, static_rules
from doctor.lint.testing import check_snippet

OWN = {
    "epoch-scheduler-stepped-per-batch": "DR107",
    "softmax-over-batch-dim": "DR405",
    "optimizer-before-model-wrap": "DR803",
    "submodules-in-plain-list": "DR507",
    "params-missing-from-optimizer": "DR804",
    "accum-loss-per-token-normalisation": "DR204",
}


def model_of(code: str) -> TrainingModel:
    return TrainingModel(ast.parse(textwrap.dedent(code)))


def found(code, rule):
    return [f for f in check_snippet(code, [static_rules()[rule]]) if f.rule == rule]


def test_codes_and_defaults():
    assert {name: static_rules()[name].code for name in OWN} == OWN
    default = {r.name for r in select_rules()}
    assert set(OWN) <= default
    assert lookup("DR804") is static_rules()["params-missing-from-optimizer"]
    assert static_rules()["accum-loss-per-token-normalisation"].severity == Severity.WARNING


# -- analysis: schedules -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "expr,unit",
    [
        ("args.epochs", EPOCHS),
        ("len(loader) * args.epochs", STEPS),
        ("steps_per_epoch * num_epochs", STEPS),
        ("cfg.max_iters", STEPS),
        ("[int(0.5 * epochs), int(0.75 * epochs)]", EPOCHS),
        ("[30, 60, 90]", LITERAL),
        ("args.lr_step", None),
        ("cfg.SOLVER.T_MAX", None),
    ],
)
def test_horizon_units(expr, unit):
    m = model_of(f"x = {expr}\n")
    assert horizon_unit(m, m.tree.body[0].value)[0] == unit


def test_horizon_unit_follows_local_names():
    m = model_of("""
    def build(optimizer, loader, args):
        total = len(loader) * args.epochs
        t_max = total
        return t_max
    """)
    ret = m.functions["build"].body[-1].value
    assert horizon_unit(m, ret)[:2] == (STEPS, "len(loader)")


def test_loop_roles():
    m = model_of("""
    import torch
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    for epoch in range(10):
        for x, y in loader:
            pass
    for it in range(max_iters):
        pass
    """)
    outer = m.tree.body[2]
    inner = outer.body[0]
    assert is_epoch_loop(outer) and not iterates_batches(m, outer)
    assert iterates_batches(m, inner) and not is_epoch_loop(inner)
    assert not is_epoch_loop(m.tree.body[3]) and not iterates_batches(m, m.tree.body[3])


# -- analysis: order ---------------------------------------------------------------------------------------
def test_statement_order_and_exclusive_arms():
    m = model_of("""
    a = 1
    if flag:
        b = 2
    else:
        c = 3
    d = 4
    """)
    a, if_, d = m.tree.body
    b, c = if_.body[0], if_.orelse[0]
    assert runs_after(m.index, a, d) and runs_after(m.index, a, b)
    assert not runs_after(m.index, d, a)
    assert exclusive(m.index, b, c) and not runs_after(m.index, b, c)


# -- analysis: modules -------------------------------------------------------------------------------------
def test_parameter_roots():
    m = model_of("""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.ndim > 1 else no_decay)
    for n, p in model.backbone.named_parameters():
        decay.append(p)
    groups = [{"params": decay}, {"params": model.head.parameters(), "lr": 1e-3}, {"params": [model.cls_token]}]
    opt = torch.optim.AdamW(groups)
    """)
    call = m.tree.body[-1].value
    roots, complete = parameter_roots(m, call.args[0])
    assert roots == {"model.backbone", "model.head", "model.cls_token"} and complete
    assert [b.key for b in optimizer_builds(m)] == ["opt"]


def test_module_attributes_and_frozen_parts():
    m = model_of("""
    import torch
    from torch import nn
    class Net(nn.Module):
        def __init__(self, teacher):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.token = nn.Parameter(torch.zeros(4))
            self.fixed = nn.Parameter(torch.zeros(4), requires_grad=False)
            self.blocks = []
            for _ in range(3):
                self.blocks.append(nn.Linear(4, 4))
            self.teacher = [teacher]
        def forward(self, x):
            with torch.no_grad():
                t = self.teacher[0](x)
            return self.body(x) + self.token
    net = Net(None)
    net.body.requires_grad_(False)
    """)
    tables = ModuleTables(m)
    attrs = tables.submodules(m.classes["Net"])
    assert attrs["body"].holds == LAYER and attrs["token"].holds == PARAMETER
    assert attrs["fixed"].holds != PARAMETER
    assert attrs["blocks"].holds == PLAIN and attrs["blocks"].what == "nn.Linear"
    assert attrs["teacher"].holds == PASSED
    assert tables.forward_reads(m.classes["Net"]) == {"body", "token"}
    assert frozen_keys(m) == {"net.body"}


# -- analysis: shapes --------------------------------------------------------------------------------------
def test_ranks_and_batches():
    m = model_of("""
    import torch
    import torch.nn.functional as F
    from torch import nn
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(8, 8, batch_first=True)
            self.fc = nn.Linear(8, 4)
        def forward(self, x):
            out, _ = self.rnn(x)
            return self.fc(out)
    head = Head()
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    for xb, yb in loader:
        h = head(xb.float())
    scores = torch.bmm(q, k.transpose(1, 2)) / 8
    v = x.view(b, t, c)
    one = state.unsqueeze(0)
    flat = logits.view(-1)
    """)
    shapes = Shapes(m)
    fwd = m.methods["Head"]["forward"]
    assert shapes.ndim(fwd.body[-1].value).ndim == 3 and shapes.ndim(fwd.body[-1].value).assumed
    loop = m.tree.body[6]
    assert "loader loop" in shapes.batched(loop.body[0].value)
    assert shapes.ndim(m.tree.body[7].value).ndim == 3
    assert shapes.ndim(m.tree.body[8].value).ndim == 3
    assert "adds a batch dimension" in shapes.batched(m.tree.body[9].value)
    assert shapes.batched(m.tree.body[10].value) is None


# -- rules: locations, severities, messages ----------------------------------------------------------------
def test_scheduler_literal_horizon_is_a_warning_and_named_epochs_an_error():
    code = """
import torch
opt = torch.optim.SGD(model.parameters(), lr=0.1)
a = torch.optim.lr_scheduler.StepLR(opt, step_size=30)
b = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
for epoch in range(90):
    for x, y in train_loader:
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.step()
        a.step()
        b.step()
"""
    got = {f.line: f.severity for f in found(code, "epoch-scheduler-stepped-per-batch")}
    assert got == {11: Severity.WARNING, 12: Severity.ERROR}


def test_scheduler_in_a_warmup_condition_on_the_epoch_still_counts_per_batch():
    code = """
import torch
warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=args.warmup_epochs)
for epoch in range(args.epochs):
    for x, y in train_loader:
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.step()
        if epoch < args.warmup_epochs:
            warmup.step()
"""
    assert [f.line for f in found(code, "epoch-scheduler-stepped-per-batch")] == [10]


def test_scheduler_for_another_optimizer_is_not_judged_against_this_loop():
    code = """
import torch
opt_g = torch.optim.Adam(gen.parameters())
opt_d = torch.optim.Adam(disc.parameters())
sched_d = torch.optim.lr_scheduler.StepLR(opt_d, step_size=args.decay_epochs)
for epoch in range(args.epochs):
    for x in loader:
        opt_g.zero_grad()
        gen_loss(x).backward()
        opt_g.step()
    sched_d.step()
"""
    assert not found(code, "epoch-scheduler-stepped-per-batch")


def test_softmax_rank_from_view_without_dim():
    code = """
import torch.nn.functional as F
def step(logits, b, t, v):
    return F.softmax(logits.view(b, t, v))
"""
    [f] = found(code, "softmax-over-batch-dim")
    assert f.severity == Severity.ERROR and "3-D" in f.message


def test_optimizer_wrap_reports_at_the_wrap():
    code = """
import torch
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
model = Net()
optimizer = torch.optim.AdamW(model.parameters())
model.cuda()
model = FSDP(model)
"""
    [f] = found(code, "optimizer-before-model-wrap")
    assert f.line == 7 and "line 5" in f.message


def test_submodule_list_fix_appended_list(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent("""
        from torch import nn
        class Net(nn.Module):
            def __init__(self, n):
                super().__init__()
                self.layers = []
                for _ in range(n):
                    self.layers.append(nn.Linear(4, 4))
            def forward(self, x):
                for layer in self.layers:
                    x = layer(x)
                return x
    """))
    done = fix_file(str(path), [static_rules()["submodules-in-plain-list"]], Settings(), unsafe=True)
    assert done.applied == 1
    assert "self.layers = nn.ModuleList()" in done.fixed.decode()
    assert not found(done.fixed.decode(), "submodules-in-plain-list")


def test_submodule_dict_has_no_fix():
    code = """
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = {"a": nn.Linear(4, 2), "b": nn.Linear(4, 3)}
"""
    [f] = found(code, "submodules-in-plain-list")
    assert f.fix is None and "ModuleDict" in f.message


def test_params_missing_reports_inferred_model_class():
    code = """
import torch
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 2)
    def forward(self, x):
        return self.c(self.b(self.a(x)))
def make_optimizer(net: Net):
    return torch.optim.SGD([{"params": net.a.parameters()}, {"params": net.c.parameters()}], lr=0.1)
"""
    [f] = found(code, "params-missing-from-optimizer")
    assert "`net.b`" in f.message and "annotated `Net`" in f.message


def test_accum_token_mean_needs_variable_token_counts():
    base = """
import torch
import torch.nn.functional as F
for step, (x, y) in enumerate(loader):
    logits = model(x)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1){extra})
    (loss / grad_accum_steps).backward()
    if (step + 1) % grad_accum_steps == 0:
        opt.step()
        opt.zero_grad()
"""
    assert not found(base.format(extra=""), "accum-loss-per-token-normalisation")
    assert found(base.format(extra=", ignore_index=tokenizer.pad_token_id"), "accum-loss-per-token-normalisation")
    assert not found(base.format(extra=", ignore_index=-1"), "accum-loss-per-token-normalisation")
