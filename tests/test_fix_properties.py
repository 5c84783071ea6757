"""Properties of the checker and the fixer over generated training-loop programs.

The programs are built from the statements real training loops are made of (clearing, forward, backward,
optimizer and scheduler steps, GradScaler calls, clipping, accumulation guards, running totals, evaluation
switches, logging the learning rate), in any order, inside epoch and batch loops, at module level or in a
function. For every program:

- checking never crashes and never reports an internal error;
- the fixed program parses;
- a second ``--fix`` changes nothing;
- the fixes never bring a finding that was not there (of another rule, or of the same one).

The example count is fixed and the search derandomized, so the test is deterministic and takes seconds.
"""

from __future__ import annotations

import ast
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doctor.lint.config import Settings
from doctor.lint.engine import check_source
from doctor.lint.fixer import fix_bytes
from doctor.lint.registry import static_rules

RULES = [r for r in static_rules().values() if r.name != "unused-suppression"]

HEADER = """\
import torch
import torch.nn as nn
import torch.nn.functional as F
model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 4))
optimizer = torch.optim.{optim}(model.parameters(), lr={lr}{decay})
scheduler = torch.optim.lr_scheduler.{sched}(optimizer, {sched_arg})
scaler = torch.cuda.amp.GradScaler()
criterion = nn.CrossEntropyLoss()
loader = torch.utils.data.DataLoader(dataset, batch_size=32{shuffle})
accum = 4
total = 0
"""

STATEMENTS = [
    "optimizer.zero_grad()",
    "optimizer.zero_grad(set_to_none=True)",
    "out = model(x)",
    "loss = criterion(model(x), y)",
    "loss = criterion(F.softmax(model(x), dim=1), y)",
    "loss = F.nll_loss(model(x), y)",
    "loss = criterion(model(x).detach(), y)",
    "loss.backward()",
    "(loss / accum).backward()",
    "scaler.scale(loss).backward()",
    "loss.backward(retain_graph=True)",
    "optimizer.step()",
    "scaler.step(optimizer)",
    "scaler.update()",
    "scaler.unscale_(optimizer)",
    "scheduler.step()",
    "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)",
    "total += loss",
    "total += loss.item()",
    "total = total + loss",
    "print(scheduler.get_last_lr()[0])",
    "lr = optimizer.param_groups[0]['lr']",
    "model.eval()",
    "model.train()",
    "out = model.forward(x)",
    "x = F.dropout(x, 0.5)",
]

statement = st.sampled_from(STATEMENTS)


@st.composite
def block(draw, depth: int = 0):
    """Statements, some of them grouped under an accumulation guard, an evaluation block or a no_grad block."""
    lines: list[str] = []
    for _ in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from(["stmt"] * 6 + (["guard", "no_grad", "if"] if depth < 2 else [])))
        if kind == "stmt":
            lines.append(draw(statement))
            continue
        head = {
            "guard": "if (i + 1) % accum == 0:",
            "no_grad": "with torch.no_grad():",
            "if": draw(st.sampled_from(["if use_amp:", "if i == 0:", "if epoch > 0:"])),
        }[kind]
        inner = draw(block(depth + 1))
        lines.append(head)
        lines.extend("    " + line for line in inner)
        if kind == "if" and draw(st.booleans()):
            lines.append("else:")
            lines.extend("    " + line for line in draw(block(depth + 1)))
    return lines


@st.composite
def programs(draw) -> str:
    optim = draw(st.sampled_from(["SGD", "Adam", "AdamW"]))
    header = HEADER.format(
        optim=optim,
        lr=draw(st.sampled_from(["0.1", "1e-3", "3e-4"])),
        decay=draw(st.sampled_from(["", ", weight_decay=0.01"])),
        sched=draw(st.sampled_from(["StepLR", "CosineAnnealingLR"])),
        sched_arg="10" if True else "",
        shuffle=draw(st.sampled_from(["", ", shuffle=True"])),
    )
    before = draw(st.lists(statement, max_size=2))
    body = draw(block())
    after = draw(st.lists(statement, max_size=2))
    loop = ["for i, (x, y) in enumerate(loader):", *("    " + line for line in body)]
    if draw(st.booleans()):
        loop = ["for epoch in range(10):", *("    " + line for line in before), *("    " + line for line in loop),
                *("    " + line for line in after)]
    lines = loop
    if draw(st.booleans()):
        lines = ["def train(use_amp=False):", *("    " + line for line in lines), "", "train()"]
    else:
        lines = ["use_amp = False", *lines]
    return header + "\n".join(lines) + "\n"


def _counts(findings) -> Counter:
    return Counter(f.rule for f in findings)


@settings(max_examples=120, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(programs())
def test_generated_training_loops(program):
    data = program.encode()
    ast.parse(program)  # the generator makes valid Python
    checked = check_source("train.py", data, RULES, Settings())
    assert checked.error is None, checked.error
    assert "syntax-error" not in {f.rule for f in checked.findings}

    done = fix_bytes("train.py", data, RULES, Settings(), unsafe=True)
    assert not any("internal error" in m for m in done.messages), done.messages
    fixed = done.fixed.decode()
    ast.parse(fixed)  # the fixed code parses

    again = fix_bytes("train.py", done.fixed, RULES, Settings(), unsafe=True)
    assert again.fixed == done.fixed and again.applied == 0, (again.messages, fixed)

    if done.fixed != data:
        after = check_source("train.py", done.fixed, RULES, Settings())
        assert after.error is None, after.error
        grew = {r: n for r, n in _counts(after.findings).items() if n > _counts(checked.findings)[r]}
        assert not grew, (grew, fixed)
