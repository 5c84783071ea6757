"""Notebooks: checked cell by cell as one program, findings name the cell, fixes write back into the JSON."""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import pytest

from doctor.lint.config import Settings
from doctor.lint.engine import check_file
from doctor.lint.fixer import fix_file
from doctor.lint.registry import static_rules
from doctor.core.source import decode_notebook, encode_notebook

from conftest import FIXTURES

NOTEBOOKS = os.path.join(FIXTURES, "notebooks")
TRAIN_NB = os.path.join(NOTEBOOKS, "train_classifier.ipynb")
FIXABLE = [r for r in static_rules().values() if r.fixable is not None]
EXAMPLES = [(r, i, textwrap.dedent(code).strip("\n")) for r in FIXABLE for i, code in enumerate(r.fires)]


def _copy(tmp_path, name="train_classifier.ipynb"):
    dst = tmp_path / name
    shutil.copy(os.path.join(NOTEBOOKS, name), dst)
    return dst


def _notebook(*cells: str, indent=1) -> str:
    nb = {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": ["# Notes\n", "text"]},
            *[
                {
                    "cell_type": "code",
                    "execution_count": n,
                    "metadata": {"collapsed": False},
                    "outputs": [{"name": "stdout", "output_type": "stream", "text": [f"cell {n}\n"]}],
                    "source": src.splitlines(keepends=True),
                }
                for n, src in enumerate(cells, 1)
            ],
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(nb, indent=indent, ensure_ascii=False) + "\n"


def test_findings_name_the_cell_and_the_line_in_it(run_doctor):
    r = run_doctor("check", "train_classifier.ipynb", "--no-cache", cwd=NOTEBOOKS)
    assert r.returncode == 1
    # Cell 4 of the notebook (the markdown cell counts, as in Jupyter), line 4 of that cell.
    assert "train_classifier.ipynb:cell 4:4:5: DR101 [*]" in r.stdout
    assert "train_classifier.ipynb:cell 4:5:5: DR102 [*]" in r.stdout
    assert "DR000" not in r.stdout  # `%matplotlib inline` and `!pip install` are skipped, not syntax errors
    data = json.loads(run_doctor("check", TRAIN_NB, "--no-cache", "--format", "json").stdout)
    places = {(f["code"], f["cell"], f["line"], f["column"]) for f in data["findings"]}
    assert places == {("DR101", 3, 4, 5), ("DR102", 3, 5, 5)}


def test_fix_writes_only_the_changed_cell_sources(run_doctor, tmp_path):
    path = _copy(tmp_path)
    before_bytes = path.read_bytes()
    before = json.loads(before_bytes)
    r = run_doctor("check", str(path), "--fix", "--unsafe-fixes", "--no-cache")
    assert r.returncode == 0, r.stdout + r.stderr
    after = json.loads(path.read_bytes())
    assert after["cells"][3]["source"] == [
        "for x, y in loader:\n",
        "    loss = loss_fn(model(x), y)\n",
        "    opt.zero_grad()\n",
        "    loss.backward()\n",
        "    opt.step()\n",
        "    sched.step()  # keep this comment",
    ]
    # Everything else is the same, and so is the layout: the file is the original with just that list changed.
    before["cells"][3]["source"] = after["cells"][3]["source"]
    assert after == before
    assert path.read_bytes() == (json.dumps(before, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    assert before_bytes.count(b"\n") + 1 == path.read_bytes().count(b"\n")  # one line added, nothing reflowed
    r = run_doctor("check", str(path), "--fix", "--unsafe-fixes", "--no-cache")
    assert r.returncode == 0 and "Fixed" not in r.stderr


def test_diff_names_the_cell_and_writes_nothing(run_doctor, tmp_path):
    path = _copy(tmp_path)
    data = path.read_bytes()
    r = run_doctor("check", path.name, "--diff", "--unsafe-fixes", "--no-cache", cwd=tmp_path)
    assert r.returncode == 1
    assert f"--- a/{path.name}:cell 4\n+++ b/{path.name}:cell 4\n" in r.stdout
    assert "+    opt.zero_grad()\n" in r.stdout
    assert path.read_bytes() == data


def test_invalid_json_notebook_is_a_clear_error(run_doctor, tmp_path):
    path = _copy(tmp_path, "not_json.ipynb")
    data = path.read_bytes()
    for extra in ((), ("--fix", "--unsafe-fixes")):
        r = run_doctor("check", str(path), "--no-cache", *extra)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "not a valid notebook (JSON)" in r.stdout and "Traceback" not in r.stdout + r.stderr
        assert path.read_bytes() == data


def test_syntax_error_in_one_cell_is_reported_in_that_cell(run_doctor, tmp_path):
    path = _copy(tmp_path, "syntax_error_cell.ipynb")
    data = path.read_bytes()
    r = run_doctor("check", str(path), "--no-cache", "--format", "json")
    assert r.returncode == 1
    [finding] = json.loads(r.stdout)["findings"]
    assert (finding["rule"], finding["cell"], finding["line"]) == ("syntax-error", 2, 1)
    r = run_doctor("check", str(path), "--fix", "--unsafe-fixes", "--no-cache")
    assert r.returncode == 1 and ":cell 3:1:" in r.stdout
    assert path.read_bytes() == data


@pytest.mark.parametrize("indent", [1, 2, 4])
def test_notebook_layout_round_trips(indent):
    text = _notebook("import torch\nx = 'café'\n", indent=indent)
    data = text.encode("utf-8")
    nb = decode_notebook(data).notebook
    assert encode_notebook(data, nb) == data
    crlf = text.replace("\n", "\r\n").encode("utf-8")
    assert encode_notebook(crlf, decode_notebook(crlf).notebook) == crlf
    escaped = (json.dumps(json.loads(text), indent=indent, ensure_ascii=True) + "\n").encode("ascii")
    assert encode_notebook(escaped, decode_notebook(escaped).notebook) == escaped


@pytest.mark.parametrize("rule,i,code", EXAMPLES, ids=[f"{r.name}-{i}" for r, i, _ in EXAMPLES])
def test_every_fix_lands_in_the_cell_as_it_does_in_a_script(rule, i, code, tmp_path):
    """Each fixable example as a notebook cell after a magic-only cell: the cell ends up as the fixed script."""
    script = tmp_path / "train.py"
    script.write_text(code + "\n")
    expected = fix_file(str(script), [rule], Settings(), unsafe=True)
    if not expected.applied:
        pytest.skip("this example yields no fix")
    path = tmp_path / "train.ipynb"
    path.write_text(_notebook("%load_ext autoreload\n!nvidia-smi", code))
    done = fix_file(str(path), [rule], Settings(), unsafe=True)
    assert not done.messages, done.messages
    if done.applied == 0 and all(f.fix is None for f in done.remaining if f.rule == rule.name):
        pytest.skip(f"{rule.name} offers no fix inside notebooks (the rule itself declines when ctx.source.cells is set)")
    assert done.applied == expected.applied
    before, after = json.loads(done.original), json.loads(done.fixed)
    assert "".join(after["cells"][2]["source"]) == expected.fixed.decode().rstrip("\n")
    assert all(line.endswith("\n") for line in after["cells"][2]["source"][:-1])
    before["cells"][2]["source"] = after["cells"][2]["source"]
    assert before == after
    path.write_bytes(done.fixed)
    assert not [f for f in check_file(str(path), [rule], Settings()).findings if f.fix is not None]
    assert fix_file(str(path), [rule], Settings(), unsafe=True).applied == 0


def test_fix_spanning_a_magic_line_is_not_applied(tmp_path):
    from doctor.core.findings import Applicability, Edit, Fix
    from doctor.lint.registry import Rule

    class ReplaceFirstTwoLines(Rule):
        name, code, fixable = "replace-two-lines", "DR907", Applicability.SAFE
        summary = why = bad = good = "test"

        def check(self, ctx):
            stmt = ctx.tree.body[0]
            edit = Edit(stmt.lineno - 1, 0, stmt.end_lineno, len(ctx.lines[stmt.end_lineno - 1]), "x = 1")
            yield self.finding(ctx, stmt, "t", fix=Fix("t", Applicability.SAFE, (edit,)))

    path = tmp_path / "t.ipynb"
    path.write_text(_notebook("%matplotlib inline\nimport torch\n"))
    done = fix_file(str(path), [ReplaceFirstTwoLines], Settings(), unsafe=True)
    assert done.fixed == done.original and done.applied == 0
    # The fix is left for a human: the finding stays.
    assert [f.rule for f in done.remaining] == ["replace-two-lines"]


def test_fixes_in_two_cells_of_one_program(tmp_path):
    """Module-level statements in different cells are one block: the scheduler step moves across cells' code."""
    path = tmp_path / "t.ipynb"
    path.write_text(
        _notebook(
            "import torch\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\nsched = torch.optim.lr_scheduler.StepLR(opt, 10)",
            "for x, y in loader:\n    opt.zero_grad()\n    loss_fn(model(x), y).backward()\n    sched.step()\n    opt.step()",
            "print('done')",
        )
    )
    done = fix_file(str(path), list(static_rules().values()), Settings(), unsafe=True)
    assert not done.messages and done.applied == 1
    cells = json.loads(done.fixed)["cells"]
    assert cells[2]["source"][-2:] == ["    opt.step()\n", "    sched.step()"]
    assert cells[3]["source"] == ["print('done')"]


def test_ipython_only_lines_and_cell_magics_are_not_python(tmp_path):
    path = tmp_path / "t.ipynb"
    path.write_text(
        _notebook(
            "%%bash\necho training\nls -la | head",
            "%%time\nimport torch\nopt = torch.optim.SGD(model.parameters(), lr=0.1)",
            "files = !ls data\nt = %timeit -o f()\nopt?\n??torch.optim\npip install tqdm\nx = 3 if a != b else 4",
            "for x, y in loader:\n    loss_fn(model(x), y).backward()\n    opt.step()",
        )
    )
    findings = check_file(str(path), list(static_rules().values()), Settings()).findings
    assert "syntax-error" not in {f.rule for f in findings}
    assert [(f.cell, f.line) for f in findings if f.rule == "missing-zero-grad"] == [(4, 3)]
    done = fix_file(str(path), list(static_rules().values()), Settings(), unsafe=True)
    cells = json.loads(done.fixed)["cells"]
    assert cells[4]["source"][1] == "    opt.zero_grad()\n" and cells[1] == json.loads(done.original)["cells"][1]
