"""IPython syntax in notebook cells is recognised the way IPython recognises it, and replaced by Python that
keeps every block valid and every line (and column) where it was.

The corpus under fixtures/notebooks/ipython/ holds realistic notebooks with `%` string formatting on
continuation lines, shell and magic lines inside blocks, `!cmd \\` continued shell lines, cell magics, `?` help
lines and cells indented as a whole; every notebook must parse, and each `# expect: rule` comment must be
matched by a finding on that cell line (default rules).
"""

from __future__ import annotations

import ast
import json
import os
import re

import pytest

from doctor.core.ipython import cell_to_python
from doctor.core.source import decode_notebook
from doctor.lint.config import Settings
from doctor.lint.engine import check_file
from doctor.lint.registry import select_rules

from conftest import FIXTURES

CORPUS = os.path.join(FIXTURES, "notebooks", "ipython")
NOTEBOOKS = sorted(f for f in os.listdir(CORPUS) if f.endswith(".ipynb"))
EXPECT = re.compile(r"#\s*expect:\s*([a-z0-9\-, ]+)")


def python_of(cell: str) -> str:
    code = cell_to_python(cell.split("\n"))
    assert len(code.lines) == len(cell.split("\n")), "the cell must keep its number of lines"
    return "\n".join(code.lines)


def parses(text: str) -> bool:
    try:
        ast.parse(text)
    except SyntaxError:
        return False
    return True


# -- what is IPython syntax and what is not -------------------------------------------------------------------
@pytest.mark.parametrize(
    "cell",
    [
        # `%` as the operator of a multi-line formatting expression: inside brackets...
        "print('loss %.3f acc %.3f'\n      % (loss, acc))",
        # ... or after a backslash: the line continues a logical line, it does not start one.
        "msg = 'epoch %d' \\\n% epoch",
        "x = ('a'\n     '%s'\n     % b)",
        # `!` and `%` inside a (triple-quoted) string are text.
        "s = '''\n!not a shell line\n%not a magic\n'''",
        "d = {'a': 1,\n     '!b': 2,\n}",
        # Comparison operators around an assignment are not `x = !cmd`.
        "ok = a != b\nflag = x <= y",
    ],
)
def test_python_that_looks_like_ipython_is_left_alone(cell):
    assert python_of(cell) == cell


@pytest.mark.parametrize(
    "cell,want",
    [
        # A shell line that is the only statement of a block keeps the block (IPython: a call at that place).
        ("if not os.path.exists('d'):\n    !wget http://x/y.zip", "if not os.path.exists('d'):\n    pass"),
        ("for i in range(3):\n    %time f(i)\nelse:\n    !echo done", "for i in range(3):\n    pass\nelse:\n    pass"),
        # `!cmd \` continues onto the next lines, which are part of the command.
        ("!python export.py --weights a.pt \\\n        --grid --simplify \\\n        --topk 100\nimport torch",
         "pass\n\n\nimport torch"),
        # Assignments from the shell or a magic keep their target.
        ("files = !ls data\nt = %timeit -o f()", "files = None\nt = None"),
        # Help lines, at either end.
        ("torch.optim.SGD?\n??nn.Linear\nopt.step??", "pass\npass\npass"),
        # The autocall escapes and the automagic pip.
        ("pip install tqdm\n/print 1 2", "pass\npass"),
    ],
)
def test_ipython_syntax_becomes_python_in_place(cell, want):
    got = python_of(cell)
    assert got == want
    assert parses(got)


def test_cell_magics_only_on_the_first_line():
    # A Python cell magic: the body is checked (its own magics replaced too).
    assert python_of("%%time\nfor i in range(3):\n    !echo $i\n    x = i") == "pass\nfor i in range(3):\n    pass\n    x = i"
    # Any other cell magic: the cell is not Python.
    assert python_of("%%bash\nfor f in *; do\n  echo $f\ndone") == "pass\n\n\n"
    assert python_of("\n%%writefile a.py\nimport torch") == "\npass\n"
    # `%%` further down is a line escape, as in IPython (which calls a line magic named `%time`).
    assert python_of("x = 1\n%%time") == "x = 1\npass"


def test_indented_cells_are_dedented_and_columns_remembered():
    code = cell_to_python([" import torch", " x = torch.zeros(1)", "", " if x:", "     !echo yes"])
    assert code.lines == ["import torch", "x = torch.zeros(1)", "", "if x:", "    pass"]
    assert code.removed == {0: 1, 1: 1, 3: 1, 4: 1}
    code = cell_to_python([">>> for i in y:", "...     print(i)"])
    assert code.lines == ["for i in y:", "    print(i)"] and code.removed == {0: 4, 1: 4}


def test_real_syntax_errors_stay_syntax_errors():
    assert not parses(python_of("x = !y\ncriterion = # TODO"))
    assert not parses(python_of("x == !y"))  # IPython does not read that either


# -- the corpus -------------------------------------------------------------------------------------------
def expectations(path: str) -> set[tuple[int, int, str]]:
    with open(path, encoding="utf-8") as fh:
        nb = json.load(fh)
    out = set()
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        for line_no, line in enumerate("".join(cell["source"]).splitlines(), 1):
            m = EXPECT.search(line)
            if m:
                out.update((index, line_no, r.strip()) for r in m.group(1).split(",") if r.strip())
    return out


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_corpus_notebook_parses_and_is_checked(name):
    path = os.path.join(CORPUS, name)
    with open(path, "rb") as fh:
        source = decode_notebook(fh.read())
    assert parses(source.text), name
    result = check_file(path, select_rules(), Settings())
    assert result.error is None and not result.skipped, result.error
    got = {(f.cell, f.line, f.rule) for f in result.findings}
    assert "syntax-error" not in {f.rule for f in result.findings}
    assert got == expectations(path), [(f.cell, f.line, f.column, f.rule) for f in result.findings]


def test_corpus_is_there():
    assert len(NOTEBOOKS) >= 4
    assert sum(len(expectations(os.path.join(CORPUS, n))) for n in NOTEBOOKS) >= 4


def test_columns_in_an_indented_cell_are_the_cells_own():
    result = check_file(os.path.join(CORPUS, "indented_cells.ipynb"), select_rules(), Settings())
    [f] = result.findings
    # `        scheduler.step()` in the cell as written: 8 spaces (4 of them the cell's own indentation).
    assert (f.cell, f.line, f.column, f.end_column) == (3, 5, 9, 25)
    assert f.fix is None  # the fixer never writes into a cell whose indentation was removed: no [*]


def test_fix_leaves_magics_and_shell_lines_alone(tmp_path, run_doctor):
    path = tmp_path / "nb.ipynb"
    path.write_bytes(open(os.path.join(CORPUS, "export_and_shell.ipynb"), "rb").read())
    before = json.loads(path.read_text())
    r = run_doctor("check", str(path), "--fix", "--unsafe-fixes", "--no-cache")
    assert r.returncode == 0, r.stdout + r.stderr
    after = json.loads(path.read_text())
    cell = "".join(after["cells"][5]["source"])
    assert "    opt.zero_grad()\n    loss.backward()" in cell and cell.startswith("%%time\n")
    assert "        !nvidia-smi --query-gpu=memory.used --format=csv\n" in cell
    for i, (a, b) in enumerate(zip(before["cells"], after["cells"])):
        if i != 5:
            assert a == b
