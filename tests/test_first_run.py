"""First run and rough edges: what a new user meets in the first minutes (README commands, `doctor rules`,
`doctor explain`, `--exclude`, `--quiet`, stdin) and what a careful one notices in the reports (subscripted
optimizers, fixes that would change a logged LR, multi-line code in messages, SARIF URIs and rule text,
notebook annotations, a local torch.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import FIXTURES, REPO

BUGGY = os.path.join(FIXTURES, "cli", "buggy.py")
CLEAN = os.path.join(FIXTURES, "cli", "clean.py")


def findings(proc):
    return json.loads(proc.stdout)["findings"]


# -- the README's set-up commands ------------------------------------------------------------------------------
def test_readme_fixture_run_exits_one_as_the_readme_says(run_doctor):
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    assert "pip install -e . && doctor check fixtures/static" in readme
    assert "exits with status 1" in readme  # the README says the fixtures are buggy on purpose
    r = run_doctor("check", "fixtures/static", "--no-cache", cwd=REPO)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    summary = r.stdout.strip().splitlines()[-2]
    assert re.match(r"Found \d+ problems \(.*\) in \d+ files checked", summary), summary
    assert re.search(r"Found \d+ problems \(.*\) in \d+ files checked", readme)  # the README shows that line


def test_readme_explains_the_cpu_build_of_torch():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    assert "--index-url" in readme and "CPU" in readme


# -- rules and explain ------------------------------------------------------------------------------------
def test_rules_lists_the_runtime_checks_too(run_doctor):
    out = run_doctor("rules").stdout
    assert "missing-zero-grad" in out and "gradient-flow" in out and "DP105" in out
    static = run_doctor("rules", "--kind", "static").stdout
    assert "missing-zero-grad" in static and "gradient-flow" not in static
    runtime = json.loads(run_doctor("rules", "--kind", "runtime", "--format", "json").stdout)
    assert {r["kind"] for r in runtime} == {"runtime"}


def test_explain_a_runtime_check_shows_its_numbers(run_doctor):
    out = run_doctor("explain", "DP105").stdout
    assert "1e-6" in out and "1000" in out  # the thresholds as numbers
    assert "VANISH_RATIO" not in out and "EXPLODE_WARN" not in out


# -- --exclude, --quiet, stdin ---------------------------------------------------------------------------------
def test_exclude_on_the_command_line(tmp_path, run_doctor):
    (tmp_path / "old").mkdir()
    shutil.copy(BUGGY, tmp_path / "old" / "train.py")
    shutil.copy(BUGGY, tmp_path / "train.py")
    r = run_doctor("check", ".", "--exclude", "old", "--no-cache", "--format", "json", cwd=tmp_path)
    assert [f["path"] for f in findings(r)] == ["train.py"]
    # It applies to files named on the command line too (pre-commit passes every staged file).
    r = run_doctor("check", "train.py", "old/train.py", "--exclude", "old/*,other", "--no-cache", "--format", "json", cwd=tmp_path)
    assert [f["path"] for f in findings(r)] == ["train.py"]


def test_quiet_prints_findings_only(tmp_path, run_doctor):
    shutil.copy(BUGGY, tmp_path / "train.py")
    r = run_doctor("check", "train.py", "-q", "--no-cache", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stdout.strip().splitlines() == [next(line for line in r.stdout.splitlines() if "DR101" in line)]
    shutil.copy(CLEAN, tmp_path / "clean.py")
    r = run_doctor("check", "clean.py", "--quiet", "--no-cache", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""


def test_stdin_with_a_file_name(tmp_path, run_doctor):
    code = open(BUGGY, encoding="utf-8").read()
    (tmp_path / "pyproject.toml").write_text('[tool.doctor.per-file-ignores]\n"scripts/*" = ["DR101"]\n')
    r = run_doctor("check", "-", "--stdin-filename", "src/train.py", "--format", "json", cwd=tmp_path, input=code)
    assert r.returncode == 1
    assert [(f["path"], f["code"], f["line"]) for f in findings(r)] == [("src/train.py", "DR101", 8)]
    # The file name decides the config that applies (per-file-ignores here).
    r = run_doctor("check", "-", "--stdin-filename", "scripts/train.py", cwd=tmp_path, input=code)
    assert r.returncode == 0, r.stdout
    # Without a name it is `-`.
    r = run_doctor("check", "-", "--no-color", input=code, cwd=tmp_path)
    assert r.stdout.startswith("-:8:5: DR101")


def test_stdin_fix_prints_the_fixed_code(tmp_path, run_doctor):
    code = "import torch\nopt = torch.optim.SGD(m.parameters(), lr=0.1)\nfor x in data:\n    opt.zero_grad()\n    loss = m(x)\n    loss.backward()\n    opt.step()\n    total += loss\n"
    r = run_doctor("check", "-", "--stdin-filename", "train.py", "--fix", input=code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == code.replace("total += loss", "total += loss.detach()")
    assert "Fixed 1 problem" in r.stderr
    assert not os.path.exists(tmp_path / "train.py")


def test_stdin_notebook(tmp_path, run_doctor):
    nb = open(os.path.join(FIXTURES, "notebooks", "train_classifier.ipynb"), encoding="utf-8").read()
    r = run_doctor("check", "-", "--stdin-filename", "nb.ipynb", "--format", "json", input=nb, cwd=tmp_path)
    assert {(f["code"], f["cell"]) for f in findings(r)} == {("DR101", 3), ("DR102", 3)}


# -- subscripted optimizers --------------------------------------------------------------------------------
SUBSCRIPTED = """\
import torch
optims = [torch.optim.SGD(model.parameters(), lr=0.1)]
for x, y in loader:
    loss_fn(model(x), y).backward()
    optims[0].step()
"""


def test_a_subscripted_optimizer_is_named_as_written_and_fixed(tmp_path, run_doctor):
    (tmp_path / "t.py").write_text(SUBSCRIPTED)
    [f] = findings(run_doctor("check", "t.py", "--no-cache", "--format", "json", cwd=tmp_path))
    assert "`optims[0]` is stepped" in f["message"] and "call `optims[0].zero_grad()`" in f["message"]
    assert "optims[]" not in f["message"] and f["fix"] is not None
    r = run_doctor("check", "t.py", "--no-cache", "--fix", "--unsafe-fixes", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "    optims[0].zero_grad()\n    loss_fn(model(x), y).backward()\n" in (tmp_path / "t.py").read_text()


def test_no_fix_is_advertised_for_an_optimizer_picked_by_a_variable(tmp_path, run_doctor):
    (tmp_path / "t.py").write_text(
        "import torch\noptims = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]\n"
        "for x, y in loader:\n    for i in range(2):\n        loss_fn(models[i](x), y).backward()\n        optims[i].step()\n"
    )
    r = run_doctor("check", "t.py", "--no-cache", "--no-color", cwd=tmp_path)
    assert "`optims[i]` is stepped" in r.stdout and "[*]" not in r.stdout


# -- the scheduler fix and a logged learning rate -----------------------------------------------------------
LOGGED_LR = """\
import torch
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.StepLR(opt, 10)
for x, y in loader:
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    sched.step()
    print("lr", sched.get_last_lr()[0])
    opt.step()
"""


@pytest.mark.parametrize("between", ['    print("lr", sched.get_last_lr()[0])\n', "    lr = opt.param_groups[0]['lr']\n", ""])
def test_the_scheduler_fix_never_moves_past_a_read_of_the_lr(between, tmp_path, run_doctor):
    code = LOGGED_LR.replace('    print("lr", sched.get_last_lr()[0])\n', between)
    (tmp_path / "t.py").write_text(code)
    [f] = findings(run_doctor("check", "t.py", "--no-cache", "--format", "json", cwd=tmp_path))
    assert f["rule"] == "scheduler-before-optimizer"
    assert (f["fix"] is None) == bool(between)


# -- messages are one line ----------------------------------------------------------------------------------
def test_messages_quote_multi_line_calls_on_one_line(tmp_path, run_doctor):
    (tmp_path / "t.py").write_text(
        "import torch\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "sched = torch.optim.lr_scheduler.StepLR(opt, 10)\nfor x, y in loader:\n    opt.zero_grad()\n"
        "    loss_fn(model(x), y).backward()\n    sched.step(\n    )\n    opt.step(\n        closure=None,\n    )\n"
    )
    r = run_doctor("check", "t.py", "--no-cache", "--no-color", cwd=tmp_path)
    [line] = [line for line in r.stdout.splitlines() if "DR101" in line]
    assert "`sched.step()` runs before `opt.step(closure=None)` (line 9)" in line
    [f] = findings(run_doctor("check", "t.py", "--no-cache", "--format", "json", cwd=tmp_path))
    assert "\n" not in f["message"]


# -- SARIF -------------------------------------------------------------------------------------------------
def test_sarif_uris_and_rule_text(tmp_path, run_doctor):
    (tmp_path / "my dir").mkdir()
    shutil.copy(BUGGY, tmp_path / "my dir" / "train.py")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.py"
    shutil.copy(BUGGY, outside)
    try:
        r = run_doctor("check", "my dir", str(outside), "--no-cache", "--format", "sarif", cwd=tmp_path)
    finally:
        outside.unlink()
    run = json.loads(r.stdout)["runs"][0]
    base = run["originalUriBaseIds"]["%SRCROOT%"]["uri"]
    assert base.startswith("file:///") and base.endswith("/") and base.rstrip("/").endswith(tmp_path.name)
    locations = [res["locations"][0]["physicalLocation"]["artifactLocation"] for res in run["results"]]
    assert {"uri": "my%20dir/train.py", "uriBaseId": "%SRCROOT%"} in locations
    assert {"uri": outside.as_uri()} in locations
    described = [rule for rule in run["tool"]["driver"]["rules"] if "fullDescription" in rule]
    assert described
    for rule in described:
        # Prose without the docstring indentation of the rule's source (code examples keep their own).
        assert not any(line[:1].isspace() for line in rule["fullDescription"]["text"].splitlines()), rule["id"]
        assert rule["fullDescription"]["text"] in rule["help"]["text"]


# -- notebooks in GitHub annotations -----------------------------------------------------------------------
def test_github_annotations_on_notebooks_point_into_the_file(tmp_path, run_doctor):
    path = tmp_path / "nb.ipynb"
    shutil.copy(os.path.join(FIXTURES, "notebooks", "train_classifier.ipynb"), path)
    lines = path.read_text().splitlines()
    gh = run_doctor("check", "nb.ipynb", "--no-cache", "--format", "github", cwd=tmp_path).stdout.splitlines()
    for annotation in gh:
        m = re.match(r"::error file=nb\.ipynb,line=(\d+),endLine=(\d+),title=(DR\d+) [a-z-]+::DR\d+ .* \(cell (\d+), line (\d+)\)$", annotation)
        assert m, annotation
        nb = json.loads(path.read_text())
        cell, cell_line = int(m[4]) - 1, int(m[5])
        code_line = nb["cells"][cell]["source"][cell_line - 1].rstrip("\n")
        # The annotated line of the file is the JSON string holding that code line.
        assert json.dumps(code_line)[1:-1] in lines[int(m[1]) - 1]


# -- the probe and a local torch.py ---------------------------------------------------------------------------
def test_a_local_torch_py_gets_a_clear_message(tmp_path):
    pytest.importorskip("torch")
    shutil.copy(os.path.join(FIXTURES, "probe", "healthy_regression.py"), tmp_path / "train.py")
    (tmp_path / "torch.py").write_text("print('my helpers')\n")
    proc = subprocess.run([sys.executable, "-m", "doctor", "probe", "train.py", "--steps", "2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "shadows the package" in proc.stderr and str(tmp_path / "torch.py") in proc.stderr
    # A torch.py in the folder doctor runs from (not next to the script) is not on the script's path at all.
    (tmp_path / "scripts").mkdir()
    shutil.move(tmp_path / "train.py", tmp_path / "scripts" / "train.py")
    proc = subprocess.run([sys.executable, "-m", "doctor", "probe", "scripts/train.py", "--steps", "2", "-q"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
