"""The documented CI setups: the workflow files parse, have the expected shape, and their doctor commands run."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import FIXTURES, REPO

DOCS = os.path.join(REPO, "docs")
GITHUB = os.path.join(DOCS, "github-workflow.yml")
GITLAB = os.path.join(DOCS, "gitlab-ci.yml")

try:
    import yaml
except ImportError:  # PyYAML comes with pre-commit (the `test` extra); without it only the text checks run
    yaml = None

needs_yaml = pytest.mark.skipif(yaml is None, reason="PyYAML is not installed (it comes with the `test` extra)")


def read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def shell_lines(script: str) -> list[str]:
    """Commands of a `run:` block or a `script:` item, one per line, comments dropped."""
    return [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]


def doctor_commands(lines: list[str]) -> list[list[str]]:
    return [shlex.split(line)[1:] for line in lines if line.startswith("doctor ")]


def github_run_lines(workflow: dict) -> list[str]:
    out = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if "run" in step:
                out += shell_lines(step["run"])
    return out


def gitlab_run_lines(config: dict) -> list[str]:
    return [line for item in config["doctor"]["script"] for line in shell_lines(item)]


def readme_ci_commands() -> list[list[str]]:
    """The `doctor check` commands the README's CI section documents."""
    text = read(os.path.join(REPO, "README.md"))
    section = text.split("### CI", 1)[1].split("\n## ", 1)[0] if "### CI" in text else ""
    return [shlex.split(m.split("#", 1)[0])[1:] for m in re.findall(r"^\s+(doctor check .*)$", section, re.MULTILINE)]


@pytest.fixture
def project(tmp_path):
    """A copy of the core fixtures (real training scripts, some with bugs), as a CI job would see a checkout."""
    dest = tmp_path / "checkout"
    shutil.copytree(os.path.join(FIXTURES, "static", "core"), dest)
    return dest


def run_doctor_line(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCTOR_")}
    env["DOCTOR_CACHE_DIR"] = os.path.join(str(cwd), ".doctor_cache")  # the GitLab job sets it the same way
    return subprocess.run([sys.executable, "-m", "doctor", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def expected_findings(folder) -> set[tuple[str, int, str]]:
    """(file, line, rule) that the fixtures' `# expect: rule` comments promise for the default rules."""
    from doctor.lint.registry import static_rules

    default_on = {r.name for r in static_rules().values() if r.default_enabled}
    expected = set()
    for name in os.listdir(folder):
        if name.endswith(".py"):
            for i, line in enumerate(read(os.path.join(folder, name)).splitlines(), 1):
                m = re.search(r"#\s*expect:\s*([a-z0-9\-, ]+)", line)
                if m:
                    expected |= {(name, i, r.strip()) for r in m.group(1).split(",") if r.strip() in default_on}
    return expected


def reported(fmt: str, out: str) -> set[tuple[str, int, str]]:
    """(file, line, rule) of each finding in one output format."""
    from doctor.lint.registry import static_rules

    by_code = {r.code: r.name for r in static_rules().values()}
    if fmt == "github":
        lines = out.strip().splitlines()
        pattern = re.compile(r"^::(error|warning|notice) file=([^,]+),line=(\d+),col=\d+,endLine=\d+,endColumn=\d+,title=DR\d+ ([a-z0-9-]+)::DR\d+ .+$")
        matches = [pattern.match(x) for x in lines]
        assert all(matches), out
        return {(m[2], int(m[3]), m[4]) for m in matches}
    if fmt == "sarif":
        doc = json.loads(out)
        assert doc["version"] == "2.1.0"
        return {
            (r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"], r["locations"][0]["physicalLocation"]["region"]["startLine"], by_code[r["ruleId"]])
            for r in doc["runs"][0]["results"]
        }
    if fmt == "json":
        return {(f["path"], f["line"], f["rule"]) for f in json.loads(out)["findings"]}
    found = {(m[1], int(m[2]), m[3]) for m in re.finditer(r"^(\S+?):(\d+):\d+: DR\d+.*\[([a-z0-9-]+)\]$", out, re.MULTILINE)}
    assert ("All checks passed" in out) == (not found), out
    return found


def check_outputs(args: list[str], proc: subprocess.CompletedProcess, cwd, expected: set) -> None:
    assert proc.returncode in (0, 1), (args, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    if "--exit-zero" in args:
        assert proc.returncode == 0
    else:  # the gate fails exactly when a finding is at or above --fail-on (default: error)
        from doctor.core.findings import Severity
        from doctor.lint.registry import lookup

        threshold = Severity.parse(args[args.index("--fail-on") + 1] if "--fail-on" in args else "error")
        fails = any(lookup(rule).severity.rank >= threshold.rank for _, _, rule in expected)
        assert proc.returncode == int(fails), (args, proc.stdout, proc.stderr)
    fmt = args[args.index("--format") + 1] if "--format" in args else "text"
    out = proc.stdout
    if "-o" in args:
        with open(os.path.join(str(cwd), args[args.index("-o") + 1]), encoding="utf-8") as fh:
            out = fh.read()
    assert reported(fmt, out) == expected, (args, out)


# -- GitHub Actions -------------------------------------------------------------------------------------------
@needs_yaml
def test_github_workflow_structure():
    wf = yaml.safe_load(read(GITHUB))
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert "pull_request" in triggers and "push" in triggers
    assert wf["permissions"]["security-events"] == "write"
    (job,) = wf["jobs"].values()
    assert job["runs-on"].startswith("ubuntu")
    uses = [s["uses"].split("@")[0] for s in job["steps"] if "uses" in s]
    assert uses[:2] == ["actions/checkout", "actions/setup-python"]
    assert "github/codeql-action/upload-sarif" in uses
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("github/codeql-action/upload-sarif"))
    commands = doctor_commands(github_run_lines(wf))
    sarif = next(c for c in commands if "sarif" in c)
    assert upload["with"]["sarif_file"] == sarif[sarif.index("-o") + 1]
    assert any(c[c.index("--format") + 1] == "github" for c in commands if "--format" in c)
    installs = [line for line in github_run_lines(wf) if "pip install" in line]
    assert installs and all("torch-doctor" in line and "torch " not in line + " " for line in installs)
    # The gate is the last step, so the SARIF upload happens even when it fails.
    assert "github" in job["steps"][-1]["run"] and "--exit-zero" not in job["steps"][-1]["run"]


@needs_yaml
def test_github_workflow_commands_run(project):
    wf = yaml.safe_load(read(GITHUB))
    commands = doctor_commands(github_run_lines(wf))
    assert len(commands) >= 2
    expected = expected_findings(project)
    assert expected  # the fixture folder has known bugs: the gate must fail on it
    for args in commands:
        check_outputs(args, run_doctor_line(args, project), project, expected)


@needs_yaml
def test_github_workflow_passes_on_clean_code(tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    for name in os.listdir(os.path.join(FIXTURES, "static", "core")):
        if name.startswith("ok_"):
            shutil.copy(os.path.join(FIXTURES, "static", "core", name), clean / name)
    assert expected_findings(clean) == set() and os.listdir(clean)
    for args in doctor_commands(github_run_lines(yaml.safe_load(read(GITHUB)))):
        check_outputs(args, run_doctor_line(args, clean), clean, set())


def test_workflow_runs_the_readme_commands():
    """Every CI command the README shows is what the documented workflow runs (same options, maybe more)."""
    readme = readme_ci_commands()
    assert readme, "README has no doctor check commands under '### CI'"
    text = read(GITHUB)
    workflow = [shlex.split(m)[1:] for m in re.findall(r"run: (doctor check .*)$", text, re.MULTILINE)]
    for cmd in readme:
        assert any(set(cmd) <= set(w) and " ".join(cmd) in " ".join(w) for w in workflow), (cmd, workflow)


# -- GitLab ---------------------------------------------------------------------------------------------------
@needs_yaml
def test_gitlab_job_structure_and_commands(project):
    config = yaml.safe_load(read(GITLAB))
    job = config["doctor"]
    assert job["image"].startswith("python:")
    assert ".doctor_cache/" in job["cache"]["paths"]
    assert job["variables"]["DOCTOR_CACHE_DIR"].endswith("/.doctor_cache")
    lines = gitlab_run_lines(config)
    commands = doctor_commands(lines)
    reports = [c[c.index("-o") + 1] for c in commands if "-o" in c]
    assert set(reports) <= set(job["artifacts"]["paths"]) and reports
    assert job["artifacts"]["when"] == "always"
    # The gate comes last, after the reports.
    assert "--exit-zero" not in commands[-1] and all("--exit-zero" in c for c in commands[:-1])
    expected = expected_findings(project)
    for args in commands:
        check_outputs(args, run_doctor_line(args, project), project, expected)


# -- docs/ci.md -----------------------------------------------------------------------------------------------
def test_ci_md_embeds_the_files_verbatim():
    doc = read(os.path.join(DOCS, "ci.md"))
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL)
    assert read(GITHUB).rstrip() + "\n" in blocks
    assert read(GITLAB).rstrip() + "\n" in blocks
    for flag in ("--fail-on", "--format github", "--format sarif", "--baseline", "--write-baseline", "--no-cache", "DOCTOR_CACHE_DIR", "CACHEDIR.TAG"):
        assert flag in doc, flag


def test_ci_md_shell_examples_use_real_options(run_doctor):
    """Every `--option` the doc mentions for `doctor check` exists (a renamed flag must not rot in the docs)."""
    help_text = run_doctor("check", "--help").stdout
    doc = read(os.path.join(DOCS, "ci.md"))
    mentioned = set(re.findall(r"doctor check [^\n`]*", doc))
    options = {o for line in mentioned for o in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", line)}
    assert options, mentioned
    for option in options:
        assert option in help_text, option
