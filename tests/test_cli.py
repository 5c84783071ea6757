"""The command-line contract: exit codes, formats, selection, configuration, suppression, bad input."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import FIXTURES

BUGGY = os.path.join(FIXTURES, "cli", "buggy.py")
CLEAN = os.path.join(FIXTURES, "cli", "clean.py")


@pytest.fixture
def project(tmp_path):
    shutil.copy(BUGGY, tmp_path / "buggy.py")
    shutil.copy(CLEAN, tmp_path / "clean.py")
    return tmp_path


def findings(proc):
    return json.loads(proc.stdout)["findings"]


# -- exit codes ---------------------------------------------------------------------------------------------
def test_clean_file_exits_zero(run_doctor):
    p = run_doctor("check", CLEAN)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "All checks passed" in p.stdout


def test_findings_exit_one_with_location(run_doctor):
    p = run_doctor("check", BUGGY, "--no-color")
    assert p.returncode == 1
    assert f"{os.path.relpath(BUGGY)}:8:5: DR101" in p.stdout
    assert "[scheduler-before-optimizer]" in p.stdout
    assert "Found 1 problem" in p.stdout


def test_exit_zero_flag(run_doctor):
    assert run_doctor("check", BUGGY, "--exit-zero").returncode == 0


def test_missing_path_is_usage_error(run_doctor, tmp_path):
    p = run_doctor("check", str(tmp_path / "nope.py"))
    assert p.returncode == 2
    assert "no such file or folder" in p.stderr
    assert "Traceback" not in p.stderr


def test_no_files_is_exit_zero(run_doctor, tmp_path):
    p = run_doctor("check", str(tmp_path), "--format", "json")
    assert p.returncode == 0
    assert findings(p) == []


def test_unknown_selector_and_format_are_usage_errors(run_doctor):
    p = run_doctor("check", CLEAN, "--select", "no-such-rule")
    assert p.returncode == 2 and "unknown rule selector" in p.stderr
    p = run_doctor("check", CLEAN, "--format", "xml")
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_default_path_is_current_folder(run_doctor, project):
    p = run_doctor("check", "--format", "json", cwd=project)
    assert p.returncode == 1
    assert {f["path"] for f in findings(p)} == {"buggy.py"}


# -- formats ---------------------------------------------------------------------------------------------
def test_json_contract(run_doctor, project):
    p = run_doctor("check", "buggy.py", "clean.py", "--format", "json", cwd=project)
    payload = json.loads(p.stdout)
    assert p.returncode == 1
    (f,) = payload["findings"]
    for key in ("path", "line", "column", "end_line", "end_column", "rule", "code", "severity", "message"):
        assert key in f
    assert f["path"] == "buggy.py"
    assert (f["line"], f["column"], f["end_line"]) == (8, 5, 8)
    assert f["rule"] == "scheduler-before-optimizer" and f["code"] == "DR101"
    assert f["severity"] in ("error", "warning", "info")
    assert f["fix"]["applicability"] == "unsafe"
    assert payload["summary"]["files"] == 2


def test_json_paths_relative_to_cwd_for_absolute_input(run_doctor, project):
    p = run_doctor("check", str(project / "buggy.py"), "--format", "json", cwd=project)
    assert findings(p)[0]["path"] == "buggy.py"


def test_github_annotations(run_doctor):
    p = run_doctor("check", BUGGY, "--format", "github")
    assert p.returncode == 1
    line = p.stdout.strip().splitlines()[0]
    assert line.startswith("::error file=")
    assert ",line=8,col=5,endLine=8," in line
    assert "title=DR101 scheduler-before-optimizer::DR101 " in line


def test_sarif_is_2_1_0_with_rule_metadata(run_doctor):
    p = run_doctor("check", BUGGY, "--format", "sarif")
    sarif = json.loads(p.stdout)
    assert sarif["version"] == "2.1.0" and "$schema" in sarif
    run = sarif["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert "DR101" in ids and len(ids) == len(set(ids))
    (result,) = run["results"]
    assert result["ruleId"] == "DR101" and result["level"] == "error"
    assert rules[result["ruleIndex"]]["id"] == "DR101"
    region = result["locations"][0]["physicalLocation"]["region"]
    assert region["startLine"] == 8 and region["startColumn"] == 5


def test_statistics(run_doctor):
    p = run_doctor("check", BUGGY, "--statistics", "--no-color")
    assert "DR101" in p.stdout and "Slowest rules" in p.stdout


def test_output_file(run_doctor, tmp_path):
    out = tmp_path / "report.json"
    p = run_doctor("check", BUGGY, "--format", "json", "-o", str(out))
    assert p.returncode == 1 and p.stdout == ""
    assert json.loads(out.read_text())["findings"][0]["rule"] == "scheduler-before-optimizer"


# -- selection -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("selector", ["DR101", "DR1", "scheduler-before-optimizer", "ALL"])
def test_select_forms(run_doctor, selector):
    p = run_doctor("check", BUGGY, "--select", selector, "--format", "json")
    codes = [f["code"] for f in findings(p)]
    # ALL also enables default-off rules (e.g. missing-seed), which may report more.
    assert codes == ["DR101"] if selector != "ALL" else "DR101" in codes


@pytest.mark.parametrize("selector", ["DR101", "DR1", "scheduler-before-optimizer"])
def test_ignore_forms(run_doctor, selector):
    p = run_doctor("check", BUGGY, "--ignore", selector, "--format", "json")
    assert p.returncode == 0 and findings(p) == []


def test_specific_select_beats_broad_ignore(run_doctor):
    p = run_doctor("check", BUGGY, "--select", "DR101", "--ignore", "DR1", "--format", "json")
    assert [f["code"] for f in findings(p)] == ["DR101"]


def test_default_off_rule_needs_select(run_doctor, tmp_path):
    f = tmp_path / "t.py"
    f.write_text("import torch\nx = 1  # noqa: DR101\n")
    assert findings(run_doctor("check", str(f), "--format", "json")) == []
    p = run_doctor("check", str(f), "--format", "json", "--select", "unused-suppression")
    assert [x["rule"] for x in findings(p)] == ["unused-suppression"]
    assert p.returncode == 0  # info is below the default failing severity


# -- configuration ---------------------------------------------------------------------------------------
def write_pyproject(path, body):
    (path / "pyproject.toml").write_text("[project]\nname = 'x'\n\n[tool.doctor]\n" + textwrap.dedent(body))


def test_pyproject_ignore(run_doctor, project):
    write_pyproject(project, 'ignore = ["DR101"]\n')
    p = run_doctor("check", ".", "--format", "json", cwd=project)
    assert p.returncode == 0 and findings(p) == []


def test_pyproject_per_file_ignores(run_doctor, project):
    write_pyproject(project, '[tool.doctor.per-file-ignores]\n"buggy.py" = ["scheduler-before-optimizer"]\n')
    p = run_doctor("check", ".", "--format", "json", cwd=project)
    assert findings(p) == []


def test_pyproject_exclude(run_doctor, project):
    write_pyproject(project, 'extend-exclude = ["buggy.py"]\n')
    p = run_doctor("check", ".", "--format", "json", cwd=project)
    assert findings(p) == [] and json.loads(p.stdout)["summary"]["files"] == 1


def test_pyproject_fail_on_and_cli_override(run_doctor, project):
    (project / "w.py").write_text("import torch\nopt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=0.01)\n")
    write_pyproject(project, 'fail-on = "warning"\nselect = ["ALL"]\n')
    p = run_doctor("check", "w.py", "--format", "json", cwd=project)
    warnings = [f for f in findings(p) if f["severity"] == "warning"]
    if not warnings:
        pytest.skip("no warning-severity rule fired on the sample (adam-weight-decay not present)")
    assert p.returncode == 1
    assert run_doctor("check", "w.py", "--fail-on", "error", cwd=project).returncode == 0


def test_config_flag_and_invalid_config(run_doctor, project, tmp_path):
    cfg = tmp_path / "doctor.toml"
    cfg.write_text('ignore = ["DR101"]\n')
    p = run_doctor("check", str(project / "buggy.py"), "--config", str(cfg), "--format", "json")
    assert findings(p) == []
    cfg.write_text("ignore = [unclosed\n")
    p = run_doctor("check", str(project / "buggy.py"), "--config", str(cfg))
    assert p.returncode == 2 and "invalid TOML" in p.stderr
    cfg.write_text('selekt = ["ALL"]\n')
    p = run_doctor("check", str(project / "buggy.py"), "--config", str(cfg))
    assert p.returncode == 2 and "unknown key" in p.stderr


def test_gitignore_respected_but_explicit_files_checked(run_doctor, project):
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / ".gitignore").write_text("buggy.py\n")
    p = run_doctor("check", ".", "--format", "json", cwd=project)
    assert findings(p) == []
    p = run_doctor("check", "buggy.py", "--format", "json", cwd=project)
    assert len(findings(p)) == 1


def test_default_excludes(run_doctor, project):
    venv = project / ".venv" / "lib"
    venv.mkdir(parents=True)
    shutil.copy(BUGGY, venv / "x.py")
    os.remove(project / "buggy.py")
    p = run_doctor("check", ".", "--format", "json", cwd=project)
    assert findings(p) == []


# -- suppression ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "comment",
    ["# noqa: DR101", "# noqa: scheduler-before-optimizer", "# noqa", "# doctor: ignore[scheduler-before-optimizer]", "# doctor: ignore", "# NOQA:DR101,DR102"],
)
def test_inline_suppression(run_doctor, tmp_path, comment):
    src = open(BUGGY).read().replace("    scheduler.step()\n", f"    scheduler.step()  {comment}\n")
    f = tmp_path / "t.py"
    f.write_text(src)
    p = run_doctor("check", str(f), "--format", "json")
    assert p.returncode == 0 and findings(p) == []


def test_suppression_of_other_code_does_not_hide(run_doctor, tmp_path):
    src = open(BUGGY).read().replace("    scheduler.step()\n", "    scheduler.step()  # noqa: E501\n")
    f = tmp_path / "t.py"
    f.write_text(src)
    assert len(findings(run_doctor("check", str(f), "--format", "json"))) == 1


def test_noqa_inside_string_is_not_a_suppression(run_doctor, tmp_path):
    src = open(BUGGY).read().replace("    scheduler.step()\n", "    scheduler.step(); s = '# noqa'\n")
    f = tmp_path / "t.py"
    f.write_text(src)
    assert len(findings(run_doctor("check", str(f), "--format", "json"))) == 1


# -- rules / explain --------------------------------------------------------------------------------------
def test_rules_lists_every_rule(run_doctor):
    from doctor.lint.registry import static_rules

    p = run_doctor("rules")
    assert p.returncode == 0
    for rule in static_rules().values():
        assert rule.name in p.stdout and rule.code in p.stdout
    data = json.loads(run_doctor("rules", "--format", "json").stdout)
    entry = next(d for d in data if d["name"] == "scheduler-before-optimizer")
    assert entry["severity"] == "error" and entry["default_enabled"] is True and entry["fixable"] == "unsafe"


@pytest.mark.parametrize("key", ["scheduler-before-optimizer", "DR101", "dr101"])
def test_explain(run_doctor, key):
    p = run_doctor("explain", key)
    assert p.returncode == 0
    for section in ("## What it does", "## Why is this bad?", "## Example", "## Use instead"):
        assert section in p.stdout
    assert "optimizer.step()" in p.stdout


def test_explain_unknown(run_doctor):
    p = run_doctor("explain", "nope")
    assert p.returncode == 2 and "unknown rule" in p.stderr


# -- bad input ----------------------------------------------------------------------------------------------
def test_syntax_error_reported_and_other_files_checked(run_doctor, project):
    (project / "broken.py").write_text("import torch\ndef train(:\n    pass\n")
    p = run_doctor("check", ".", "--format", "json", cwd=project)
    got = {(f["path"], f["rule"]) for f in findings(p)}
    assert ("broken.py", "syntax-error") in got and ("buggy.py", "scheduler-before-optimizer") in got
    broken = next(f for f in findings(p) if f["path"] == "broken.py")
    assert broken["line"] == 2
    assert p.returncode == 1 and "Traceback" not in p.stderr


def test_encodings(run_doctor, tmp_path):
    body = open(BUGGY, encoding="utf-8").read()
    (tmp_path / "latin.py").write_bytes(("# -*- coding: latin-1 -*-\n# caf\u00e9\n" + body).encode("latin-1"))
    (tmp_path / "bom.py").write_bytes(b"\xef\xbb\xbf" + body.encode())
    (tmp_path / "invalid.py").write_bytes(b"# \xff\xfe bad bytes\n" + body.encode())
    p = run_doctor("check", str(tmp_path), "--format", "json")
    assert "Traceback" not in p.stderr
    got = sorted((os.path.basename(f["path"]), f["line"]) for f in findings(p))
    assert got == [("bom.py", 8), ("invalid.py", 9), ("latin.py", 10)]


def test_non_ascii_columns_are_characters(run_doctor, tmp_path):
    body = open(BUGGY).read().replace("    scheduler.step()\n", "    s\u00e9 = 1; scheduler.step()\n")
    f = tmp_path / "t.py"
    f.write_text(body, encoding="utf-8")
    (finding,) = findings(run_doctor("check", str(f), "--format", "json"))
    assert finding["column"] == 13  # characters, not UTF-8 bytes


def test_large_generated_file(run_doctor, tmp_path):
    f = tmp_path / "generated.py"
    lines = ["import torch", "WEIGHTS = ["] + [f"    {i}.0," for i in range(600_000)] + ["]"]
    f.write_text("\n".join(lines) + "\n")
    assert f.stat().st_size > 5_000_000
    p = run_doctor("check", str(f), "--format", "json")
    assert p.returncode == 0 and "Traceback" not in p.stderr


def test_thousands_of_files_and_symlink_loop(run_doctor, tmp_path):
    root = tmp_path / "many"
    for d in range(20):
        sub = root / f"pkg{d}"
        sub.mkdir(parents=True)
        for i in range(100):
            (sub / f"m{i}.py").write_text("import torch\nx = torch.zeros(1)\n")
    shutil.copy(BUGGY, root / "pkg3" / "train.py")
    os.symlink(root, root / "pkg0" / "loop")  # a folder linking to its own ancestor
    p = run_doctor("check", str(root), "--format", "json")
    payload = json.loads(p.stdout)
    assert payload["summary"]["files"] == 2001
    assert [os.path.basename(f["path"]) for f in payload["findings"]] == ["train.py"]


def test_unreadable_notebook_is_reported_not_crashed(run_doctor, tmp_path):
    (tmp_path / "bad.ipynb").write_text("{not json")
    p = run_doctor("check", str(tmp_path), "--format", "json")
    payload = json.loads(p.stdout)
    assert payload["errors"] and "notebook" in payload["errors"][0]["message"]
    assert "Traceback" not in p.stderr


# -- the linter does not need torch --------------------------------------------------------------------------
def test_runs_with_torch_unimportable(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "from doctor.cli.main import main\n"
        "sys.argv = ['doctor', 'check', sys.argv[1], '--format', sys.argv[2]]\n"
        "main()\n"
    )
    for fmt in ("text", "json", "github", "sarif"):
        p = subprocess.run([sys.executable, "-c", code, BUGGY, fmt], capture_output=True, text=True)
        assert p.returncode == 1, (fmt, p.stderr)
        assert "DR101" in p.stdout, fmt
