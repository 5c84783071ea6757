"""Big files are checked in parts (doctor.lint.parts): the same findings as a whole-file check, at the same
places, in bounded memory. The thresholds are lowered here so that small files exercise the same code; the
real sizes and timings are measured by benchmarks/bench_big.py (BENCHMARKS.md), not here."""

from __future__ import annotations

import ast
import os
import sys

import pytest

import doctor.lint.engine as engine
import doctor.lint.parts as parts
from doctor.core.segments import layout
from doctor.lint.config import Settings
from doctor.lint.engine import check_source
from doctor.lint.registry import select_rules, static_rules

from conftest import FIXTURES, REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import bench_big  # noqa: E402  (the benchmark's generators: realistic training modules)

RULES = [r for r in static_rules().values() if r.name != "unused-suppression"]


@pytest.fixture
def small_parts(monkeypatch):
    monkeypatch.setattr(engine, "PARTS_FROM_BYTES", 20_000)
    monkeypatch.setattr(parts, "PART_BYTES", 6_000)
    monkeypatch.setattr(parts, "DATA_BYTES", 3_000)


def _program() -> str:
    code = bench_big.training_code(40_000, bug=True)  # one loss accumulated as a tensor, in the first module
    # Mistakes further down, in other parts: a scheduler stepped first, a softmax before cross-entropy.
    code += (
        "\n\ndef finetune(model, loader):\n"
        "    opt = torch.optim.SGD(model.parameters(), lr=0.01)\n"
        "    sched = torch.optim.lr_scheduler.StepLR(opt, 5)\n"
        "    for x, y in loader:\n"
        "        opt.zero_grad()\n"
        "        loss = nn.functional.cross_entropy(nn.functional.softmax(model(x), dim=1), y)\n"
        "        loss.backward()\n"
        "        sched.step()\n"
        "        opt.step()\n"
        "        x = y  # noqa: DR999\n"
    )
    return code


def _places(result):
    return sorted((f.line, f.column, f.rule, f.message) for f in result.findings)


def test_parts_find_what_the_whole_file_finds(small_parts):
    data = _program().encode()
    assert len(data) > engine.PARTS_FROM_BYTES
    in_parts = check_source("train.py", data, RULES, Settings())
    whole = [r for r in RULES if not r.whole_file]
    engine.PARTS_FROM_BYTES = 10**9  # (restored by the fixture)
    at_once = check_source("train.py", data, whole, Settings())
    assert in_parts.error is None and at_once.error is None
    assert _places(in_parts) == _places(at_once)
    assert {f.rule for f in in_parts.findings} >= {"loss-accumulated-as-tensor", "scheduler-before-optimizer", "softmax-before-cross-entropy"}
    assert all(f.fix is None for f in in_parts.findings)  # fixes are validated on whole files only


def test_the_parts_are_many_and_keep_every_line_in_place(small_parts):
    text = _program()
    plan = parts.Plan(text)
    pieces = list(plan.parts())
    assert len(pieces) > 3
    lines = text.splitlines()
    for piece in pieces:
        ast.parse(piece)
        for i, line in enumerate(piece.splitlines()):
            assert line in ("", lines[i])
    # Every statement is in some part, and the imports in every part.
    for st in layout(text).statements:
        assert any(piece.splitlines()[st.first - 1 : st.last] == lines[st.first - 1 : st.last] for piece in pieces)
    assert all(piece.startswith("import argparse\nimport os\n") for piece in pieces)


def test_a_helper_defined_in_another_part_comes_along(small_parts):
    helper = "def clear(opt):\n    opt.zero_grad()\n\n\n"
    filler = bench_big.training_code(30_000)
    loop = (
        "\n\ndef train(model, loader):\n    opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "    for x, y in loader:\n        clear(opt)\n        nn.functional.cross_entropy(model(x), y).backward()\n        opt.step()\n"
    )
    data = (filler.replace("import torch.nn as nn\n", "import torch.nn as nn\n\n" + helper, 1) + loop).encode()
    result = check_source("train.py", data, select_rules(), Settings())
    assert result.error is None
    assert "missing-zero-grad" not in {f.rule for f in result.findings}  # the clear in the helper is seen


def test_a_syntax_error_in_a_big_file_is_reported_where_it_is(small_parts):
    text = _program()
    lines = text.splitlines()
    target = len(lines) // 2
    lines[target] = lines[target] + " +"  # breaks one statement in the middle of the file
    result = check_source("train.py", "\n".join(lines).encode(), RULES, Settings())
    [f] = result.findings
    assert f.rule == "syntax-error" and f.line == target + 1


def test_a_big_data_statement_is_not_parsed(small_parts, monkeypatch):
    table = bench_big.data_table(10_000)
    code = table + "\n\n" + _program().split("\n", 6)[-1]
    seen = []
    real = engine.parse
    monkeypatch.setattr(engine, "parse", lambda source: seen.append(len(source.text)) or real(source))
    result = check_source("train.py", ("import torch\nimport torch.nn as nn\n" + code).encode(), RULES, Settings())
    assert result.error is None and seen
    assert all("0.000000, 0.001003" not in piece for piece in parts.Plan(code).parts())


def test_suppressions_in_a_big_file(small_parts):
    code = _program().replace("        sched.step()\n", "        sched.step()  # noqa: DR101\n")
    result = check_source("train.py", code.encode(), RULES, Settings())
    assert "scheduler-before-optimizer" not in {f.rule for f in result.findings}


def test_the_layout_of_top_level_statements_matches_the_parser():
    for folder, _, names in os.walk(FIXTURES):
        for name in names:
            if not name.endswith(".py"):
                continue
            text = open(os.path.join(folder, name), encoding="utf-8").read()
            try:
                tree = ast.parse(text)
            except SyntaxError:
                continue
            want = {min([s.lineno] + [d.lineno for d in getattr(s, "decorator_list", [])]) for s in tree.body}
            got = {s.first for s in layout(text).statements}
            same_line = {s.lineno for s in tree.body if sum(t.lineno == s.lineno for t in tree.body) > 1}
            assert got - {1} <= want and want - got <= {1} | same_line, name
