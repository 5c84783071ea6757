"""The CI-gate contract: --fail-on, GitHub annotations, SARIF, baselines, and the result cache."""

from __future__ import annotations

import json
import os
import re
import textwrap

import pytest

from doctor.lint.baseline import BaselineError, load_baseline, write_baseline
from doctor.lint.cache import open_cache
from doctor.lint.config import Settings
from doctor.lint.engine import check_files
from doctor.lint.registry import select_rules

# An error (missing-zero-grad, line 9) in an otherwise ordinary script.
BUGGY = textwrap.dedent(
    """\
    import torch

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    """
)
CLEAN = BUGGY.replace("    loss.backward()\n", "    optimizer.zero_grad()\n    loss.backward()\n")
# Only a warning: the running total keeps every iteration's graph (loss-accumulated-as-tensor).
WARNING_ONLY = CLEAN.replace("for x, y in loader:\n", "total = 0.0\nfor x, y in loader:\n") + "    total += loss\n"


def write(folder, name: str, text: str) -> str:
    path = os.path.join(str(folder), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def json_findings(proc) -> list[dict]:
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)["findings"]


# -- --fail-on ------------------------------------------------------------------------------------------------
def test_fail_on_thresholds(run_doctor, tmp_path):
    write(tmp_path, "err.py", BUGGY)
    write(tmp_path, "warn.py", WARNING_ONLY)
    write(tmp_path, "info.py", CLEAN)
    severities = {
        f["path"]: f["severity"]
        for f in json_findings(run_doctor("check", "--no-cache", "--extend-select", "missing-seed", "--format", "json", ".", cwd=tmp_path))
    }
    # Precondition for the exit codes below: one file at each severity.
    assert {k: severities.get(k) for k in ("err.py", "warn.py")} == {"err.py": "error", "warn.py": "warning"}
    info = run_doctor("check", "--no-cache", "--select", "missing-seed", "--format", "json", "info.py", cwd=tmp_path)
    assert [f["severity"] for f in json_findings(info)] == ["info"]

    def code(*args: str) -> int:
        return run_doctor("check", "--no-cache", *args, cwd=tmp_path).returncode

    assert code("err.py") == 1
    assert code("warn.py") == 0  # default threshold is error
    assert code("--fail-on", "error", "warn.py") == 0
    assert code("--fail-on", "warning", "warn.py") == 1
    assert code("--fail-on", "error", "err.py") == 1
    assert code("--select", "missing-seed", "info.py") == 0
    assert code("--select", "missing-seed", "--fail-on", "warning", "info.py") == 0
    assert code("--select", "missing-seed", "--fail-on", "info", "info.py") == 1
    assert code("--fail-on", "info", "warn.py") == 1
    assert code("--fail-on", "warning", "--exit-zero", "err.py") == 0
    bad = run_doctor("check", "--fail-on", "fatal", "err.py", cwd=tmp_path)
    assert bad.returncode == 2 and "fail-on" in bad.stderr


# -- GitHub annotations ---------------------------------------------------------------------------------------
_ANNOTATION = re.compile(
    r"^::(?P<level>error|warning|notice) file=(?P<file>[^,]+),line=(?P<line>\d+),col=(?P<col>\d+),"
    r"endLine=(?P<end_line>\d+),endColumn=(?P<end_col>\d+),title=(?P<title>[^:]+)::(?P<message>.+)$"
)


def test_github_annotations_match_json_findings(run_doctor, tmp_path):
    write(tmp_path, "src/err.py", BUGGY)
    write(tmp_path, "src/warn.py", WARNING_ONLY)
    gh = run_doctor("check", "--no-cache", "--format", "github", "src", cwd=tmp_path)
    assert gh.returncode == 1, gh.stderr
    expected = json_findings(run_doctor("check", "--no-cache", "--format", "json", "src", cwd=tmp_path))
    lines = gh.stdout.strip().splitlines()
    assert len(lines) == len(expected) >= 2
    level = {"error": "error", "warning": "warning", "info": "notice"}
    for line, f in zip(lines, expected):
        m = _ANNOTATION.match(line)
        assert m, line
        assert m["level"] == level[f["severity"]]
        assert m["file"] == f["path"]
        assert (int(m["line"]), int(m["col"]), int(m["end_line"]), int(m["end_col"])) == (
            f["line"], f["column"], f["end_line"], f["end_column"],
        )  # fmt: skip
        assert m["title"] == f"{f['code']} {f['rule']}"
        assert f["code"] in m["message"]
    assert any(m.startswith("::error file=src/err.py,line=9,col=5,") for m in lines)
    assert any(m.startswith("::warning file=src/warn.py,") for m in lines)


def test_github_annotation_escapes_properties(run_doctor, tmp_path):
    # A comma or colon in a file name would end the property; GitHub wants them percent-encoded.
    write(tmp_path, "a,b:c.py", BUGGY)
    gh = run_doctor("check", "--no-cache", "--format", "github", "a,b:c.py", cwd=tmp_path)
    assert gh.returncode == 1
    assert gh.stdout.startswith("::error file=a%2Cb%3Ac.py,line=9,"), gh.stdout


# -- SARIF ----------------------------------------------------------------------------------------------------
#: The parts of the SARIF 2.1.0 schema that code-scanning uploads depend on.
SARIF_ESSENTIALS = {
    "type": "object",
    "required": ["version", "$schema", "runs"],
    "properties": {
        "version": {"const": "2.1.0"},
        "$schema": {"type": "string", "pattern": "sarif-2\\.1\\.0"},
        "runs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["tool", "results"],
                "properties": {
                    "tool": {
                        "type": "object",
                        "required": ["driver"],
                        "properties": {
                            "driver": {
                                "type": "object",
                                "required": ["name", "rules"],
                                "properties": {
                                    "name": {"type": "string", "minLength": 1},
                                    "rules": {
                                        "type": "array",
                                        "items": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
                                    },
                                },
                            }
                        },
                    },
                    "results": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["ruleId", "level", "message", "locations"],
                            "properties": {
                                "ruleId": {"type": "string"},
                                "level": {"enum": ["none", "note", "warning", "error"]},
                                "message": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "minLength": 1}}},
                                "locations": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["physicalLocation"],
                                        "properties": {
                                            "physicalLocation": {
                                                "type": "object",
                                                "required": ["artifactLocation", "region"],
                                                "properties": {
                                                    "artifactLocation": {"type": "object", "required": ["uri"], "properties": {"uri": {"type": "string"}}},
                                                    "region": {
                                                        "type": "object",
                                                        "required": ["startLine"],
                                                        "properties": {
                                                            "startLine": {"type": "integer", "minimum": 1},
                                                            "startColumn": {"type": "integer", "minimum": 1},
                                                            "endLine": {"type": "integer", "minimum": 1},
                                                            "endColumn": {"type": "integer", "minimum": 1},
                                                        },
                                                    },
                                                },
                                            }
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def _check_sarif_essentials(doc: dict) -> None:
    """Hand-written check of the same essentials, for machines without jsonschema."""
    assert doc["version"] == "2.1.0" and "sarif-2.1.0" in doc["$schema"]
    run = doc["runs"][0]
    assert run["tool"]["driver"]["name"] and all(isinstance(r["id"], str) for r in run["tool"]["driver"]["rules"])
    for r in run["results"]:
        assert r["level"] in ("none", "note", "warning", "error") and r["message"]["text"]
        loc = r["locations"][0]["physicalLocation"]
        assert isinstance(loc["artifactLocation"]["uri"], str) and loc["region"]["startLine"] >= 1


def test_sarif_for_code_scanning(run_doctor, tmp_path):
    write(tmp_path, "src/err.py", BUGGY)
    write(tmp_path, "src/warn.py", WARNING_ONLY)
    out = tmp_path / "doctor.sarif"
    proc = run_doctor("check", "--no-cache", "--format", "sarif", "-o", str(out), "src", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(out.read_text(encoding="utf-8"))
    _check_sarif_essentials(doc)
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        jsonschema.validate(doc, SARIF_ESSENTIALS)
        with pytest.raises(jsonschema.ValidationError):  # the schema is not vacuous
            jsonschema.validate({**doc, "runs": [{**doc["runs"][0], "results": [{"ruleId": "DR102"}]}]}, SARIF_ESSENTIALS)
    run = doc["runs"][0]
    rule_ids = {r["id"] for r in run["tool"]["driver"]["rules"]}
    results = {(r["ruleId"], r["level"], r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]) for r in run["results"]}
    assert ("DR102", "error", "src/err.py") in results
    assert ("DR501", "warning", "src/warn.py") in results
    assert {r[0] for r in results} <= rule_ids
    err = next(r for r in run["results"] if r["ruleId"] == "DR102")
    assert err["locations"][0]["physicalLocation"]["region"]["startLine"] == 9
    # Code scanning tracks alerts across commits with this fingerprint.
    assert err["partialFingerprints"]["doctor/v1"]


# -- baseline -------------------------------------------------------------------------------------------------
def test_baseline_adoption_flow(run_doctor, tmp_path):
    write(tmp_path, "old.py", BUGGY)
    write(tmp_path, "warn.py", WARNING_ONLY)
    proc = run_doctor("check", "--write-baseline", "doctor-baseline.json", ".", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Wrote a baseline of 2 findings" in proc.stderr
    data = json.loads((tmp_path / "doctor-baseline.json").read_text())
    assert data["version"] == 1 and {e["path"] for e in data["findings"]} == {"old.py", "warn.py"}
    assert all(e["count"] == 1 and e["fingerprint"] for e in data["findings"])

    # Everything known: clean exit, nothing reported.
    proc = run_doctor("check", "--baseline", "doctor-baseline.json", "--format", "json", ".", cwd=tmp_path)
    assert proc.returncode == 0 and json_findings(proc) == []

    # A new bug in a new file is reported; the old ones stay quiet.
    write(tmp_path, "new.py", BUGGY)
    proc = run_doctor("check", "--baseline", "doctor-baseline.json", "--format", "json", ".", cwd=tmp_path)
    assert proc.returncode == 1
    assert [(f["path"], f["rule"]) for f in json_findings(proc)] == [("new.py", "missing-zero-grad")]

    # Run from another folder: paths in the baseline are relative to the baseline file, not the cwd.
    (tmp_path / "new.py").unlink()
    sub = tmp_path / "elsewhere"
    sub.mkdir()
    proc = run_doctor("check", "--baseline", "../doctor-baseline.json", "--format", "json", "..", cwd=sub)
    assert proc.returncode == 0 and json_findings(proc) == [], proc.stdout


def test_baseline_survives_moved_lines_but_not_changed_code(run_doctor, tmp_path):
    write(tmp_path, "train.py", BUGGY)
    assert run_doctor("check", "--write-baseline", "b.json", "train.py", cwd=tmp_path).returncode == 0
    # Lines inserted above the finding: same rule, same file, same code on the line -> still baselined.
    moved = "# a header comment\nimport os\n\n" + BUGGY
    write(tmp_path, "train.py", moved)
    proc = run_doctor("check", "--baseline", "b.json", "--format", "json", "train.py", cwd=tmp_path)
    assert proc.returncode == 0 and json_findings(proc) == []
    unfiltered = json_findings(run_doctor("check", "--format", "json", "train.py", cwd=tmp_path))
    assert [f["line"] for f in unfiltered] == [12]  # it did move
    # The offending line itself changes -> reported again.
    write(tmp_path, "train.py", moved.replace("    optimizer.step()\n", "    optimizer.step()  # update\n"))
    proc = run_doctor("check", "--baseline", "b.json", "--format", "json", "train.py", cwd=tmp_path)
    assert proc.returncode == 1
    assert [f["rule"] for f in json_findings(proc)] == ["missing-zero-grad"]


def test_baseline_counts_identical_findings(tmp_path):
    settings = Settings(root=str(tmp_path))
    path = write(tmp_path, "two.py", BUGGY)
    one = check_files([path], settings).findings
    assert len(one) == 1
    baseline_file = str(tmp_path / "b.json")
    write_baseline(baseline_file, one)
    # The same loop twice in one file: same rule, file and fingerprint; the baseline knows of one.
    loop = BUGGY.split("for x, y in loader:", 1)[1]
    write(tmp_path, "two.py", BUGGY + "for x, y in loader:" + loop)
    two = check_files([path], settings).findings
    assert len(two) == 2 and two[0].fingerprint == two[1].fingerprint
    new = load_baseline(baseline_file).new_findings(two)
    assert len(new) == 1
    write_baseline(baseline_file, two)
    entry = json.loads(open(baseline_file).read())["findings"]
    assert [e["count"] for e in entry] == [2]
    assert load_baseline(baseline_file).new_findings(two) == []


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "baseline file not found"),
        ("{not json", "not valid JSON"),
        ('{"tool": "doctor", "version": 99, "findings": []}', "version 99"),
        ('["a", "list"]', "not a doctor baseline"),
        ('{"tool": "doctor", "version": 1, "findings": [{"rule": "x"}]}', "entry 0 is malformed"),
    ],
)
def test_bad_baseline_is_a_clear_error_and_nothing_is_written(run_doctor, tmp_path, content, message):
    write(tmp_path, "train.py", BUGGY)
    baseline = tmp_path / "b.json"
    if content is not None:
        baseline.write_text(content)
    before = sorted(os.listdir(tmp_path))
    proc = run_doctor("check", "--no-cache", "--baseline", "b.json", "train.py", cwd=tmp_path)
    assert proc.returncode == 2
    assert "doctor: error:" in proc.stderr and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""  # no report as if the baseline had been applied
    assert sorted(os.listdir(tmp_path)) == before
    if content is not None:
        assert baseline.read_text() == content
    with pytest.raises(BaselineError):
        load_baseline(str(baseline))


# -- cache ----------------------------------------------------------------------------------------------------
def _run_cached(paths, settings, cache_dir, *, rules=None, jobs=1):
    rules = rules or select_rules(settings.select, settings.ignore, settings.extend_select)
    cache = open_cache(str(cache_dir), settings, rules)
    assert cache is not None
    return check_files(paths, settings, rules, jobs=jobs, cache=cache)


def test_cache_hit_gives_the_same_result(tmp_path):
    settings = Settings(root=str(tmp_path))
    paths = [write(tmp_path, "a.py", BUGGY), write(tmp_path, "b.py", WARNING_ONLY), write(tmp_path, "c.py", "x = 1\n")]
    first = _run_cached(paths, settings, tmp_path / "cache")
    assert not any(r.cached for r in first.files)
    second = _run_cached(paths, settings, tmp_path / "cache")
    assert all(r.cached for r in second.files)
    assert second.findings == first.findings and len(first.findings) == 2
    # Everything a reporter or the fixer reads survives the round trip.
    assert [f.to_dict() for f in second.findings] == [f.to_dict() for f in first.findings]
    assert [r.skipped for r in second.files] == [r.skipped for r in first.files] == [False, False, True]


def test_cache_is_invalidated_by_content_config_and_version(tmp_path, monkeypatch):
    settings = Settings(root=str(tmp_path))
    path = write(tmp_path, "a.py", BUGGY)
    cache_dir = tmp_path / "cache"
    _run_cached([path], settings, cache_dir)
    assert _run_cached([path], settings, cache_dir).files[0].cached
    # Content changed: a miss, and the new result is right.
    write(tmp_path, "a.py", CLEAN)
    result = _run_cached([path], settings, cache_dir)
    assert not result.files[0].cached and result.findings == []
    assert _run_cached([path], settings, cache_dir).files[0].cached
    # Configuration changed (an ignore): a miss.
    write(tmp_path, "a.py", BUGGY)
    _run_cached([path], settings, cache_dir)
    ignoring = Settings(root=str(tmp_path), ignore=("DR102",))
    result = _run_cached([path], ignoring, cache_dir)
    assert not result.files[0].cached and result.findings == []
    # Per-file ignores depend on the path, so they are part of the key too.
    pfi = Settings(root=str(tmp_path), per_file_ignores=(("a.py", ("DR102",)),))
    assert not _run_cached([path], pfi, cache_dir).files[0].cached
    # A different rule selection: a miss.
    rules = select_rules(("missing-zero-grad",), (), ())
    assert not _run_cached([path], settings, cache_dir, rules=rules).files[0].cached
    # Another doctor version: a miss.
    assert _run_cached([path], settings, cache_dir).files[0].cached
    monkeypatch.setattr("doctor.lint.cache.__version__", "999.0")
    result = _run_cached([path], settings, cache_dir)
    assert not result.files[0].cached and len(result.findings) == 1


def test_corrupt_cache_entries_are_ignored(tmp_path):
    settings = Settings(root=str(tmp_path))
    path = write(tmp_path, "a.py", BUGGY)
    cache_dir = tmp_path / "cache"
    expected = _run_cached([path], settings, cache_dir).findings
    entries = [os.path.join(d, n) for d, _, names in os.walk(cache_dir / "v1") for n in names if d != str(cache_dir / "v1")]
    assert len(entries) == 1
    for garbage in (b"{truncated", b'{"findings": [{"path": 1}]}', b"\xff\xfe", b'["a"]'):
        with open(entries[0], "wb") as fh:
            fh.write(garbage)
        result = _run_cached([path], settings, cache_dir)
        assert not result.files[0].cached and result.findings == expected
    # The miss rewrote the entry; the next run is a hit again.
    assert _run_cached([path], settings, cache_dir).files[0].cached


def test_cache_with_the_parallel_path(tmp_path):
    settings = Settings(root=str(tmp_path))
    paths = [write(tmp_path, f"m{i:02d}.py", BUGGY if i % 3 == 0 else CLEAN) for i in range(40)]
    first = _run_cached(paths, settings, tmp_path / "cache", jobs=2)
    second = _run_cached(paths, settings, tmp_path / "cache", jobs=2)
    assert not any(r.cached for r in first.files) and all(r.cached for r in second.files)
    assert second.findings == first.findings and len(first.findings) == 14
    assert [r.path for r in second.files] == paths


def test_cache_location_and_no_cache_flag(run_doctor, tmp_path):
    project = tmp_path / "project"
    write(project, "pyproject.toml", "[tool.doctor]\nignore = []\n")
    write(project, "src/train.py", BUGGY)
    env = {"DOCTOR_CACHE_DIR": ""}
    # --no-cache writes nothing.
    proc = run_doctor("check", "--no-cache", "src", cwd=project, env=env)
    assert proc.returncode == 1 and not (project / ".doctor_cache").exists()
    # Default: .doctor_cache in the config root, tagged and ignored by git.
    cold = run_doctor("check", "src", cwd=project, env=env)
    cache = project / ".doctor_cache"
    assert cache.is_dir()
    assert (cache / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert (cache / ".gitignore").read_text().splitlines()[-1] == "*"
    warm = run_doctor("check", "src", cwd=project, env=env)
    assert (warm.returncode, warm.stdout) == (cold.returncode, cold.stdout) == (1, cold.stdout)
    assert "missing-zero-grad" in warm.stdout
    # The cache folder itself is never checked.
    listed = json.loads(run_doctor("check", "--format", "json", ".", cwd=project, env=env).stdout)
    assert listed["summary"]["files"] == 1
    # $DOCTOR_CACHE_DIR and --cache-dir move it.
    other = tmp_path / "env-cache"
    assert run_doctor("check", "src", cwd=project, env={"DOCTOR_CACHE_DIR": str(other)}).returncode == 1
    assert (other / "CACHEDIR.TAG").exists()
    flag = tmp_path / "flag-cache"
    assert run_doctor("check", "--cache-dir", str(flag), "src", cwd=project, env={"DOCTOR_CACHE_DIR": str(other)}).returncode == 1
    assert (flag / "CACHEDIR.TAG").exists()
    # --statistics always measures, so it never reads or writes the cache.
    stats_dir = tmp_path / "stats-cache"
    run_doctor("check", "--statistics", "--cache-dir", str(stats_dir), "src", cwd=project)
    assert not stats_dir.exists()


def test_unwritable_cache_folder_does_not_fail_the_check(run_doctor, tmp_path):
    write(tmp_path, "train.py", BUGGY)
    blocker = write(tmp_path, "not-a-folder", "")  # a file where the cache folder should be
    proc = run_doctor("check", "--cache-dir", os.path.join(blocker, "cache"), "train.py", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "missing-zero-grad" in proc.stdout and "Traceback" not in proc.stderr


def test_fully_cached_run_loads_no_rule(tmp_path):
    """A run over unchanged files answers from the cache alone: importing rules is most of a warm run's time."""
    import subprocess
    import sys

    write(tmp_path, "train.py", BUGGY)
    write(tmp_path, "ok.py", CLEAN)
    probe = (
        "import sys\n"
        "from doctor.cli.main import main\n"
        "try:\n"
        "    main(['check', '--cache-dir', 'c', '--format', 'json', 'train.py', 'ok.py'])\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "rules = sorted(m for m in sys.modules if m.startswith('doctor.rules.static.'))\n"
        "print('\\nRESULT', code, len(rules), file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCTOR_")}

    def run():
        proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
        code, n_rules = proc.stderr.rsplit("RESULT", 1)[1].split()
        return int(code), int(n_rules), json.loads(proc.stdout)["findings"]

    cold_code, cold_rules, cold = run()
    warm_code, warm_rules, warm = run()
    assert cold_rules > 0 and warm_rules == 0
    assert (warm_code, warm) == (cold_code, cold) and cold_code == 1 and len(cold) == 1
    # A corrupt selection memo is a miss, not an error.
    for memo in (tmp_path / "c" / "v1").glob("selection-*.json"):
        memo.write_text("{oops")
    code, n_rules, findings = run()
    assert n_rules > 0 and (code, findings) == (cold_code, cold)
    assert run()[1] == 0  # and the memo was rewritten
    # One changed file: back to the normal path, and the answer reflects the change.
    write(tmp_path, "ok.py", BUGGY)
    code, n_rules, findings = run()
    assert n_rules > 0 and code == 1 and len(findings) == 2


def test_fast_path_still_rejects_unknown_selectors(run_doctor, tmp_path):
    write(tmp_path, "train.py", BUGGY)
    assert run_doctor("check", "--cache-dir", "c", "--select", "nonsense", "train.py", cwd=tmp_path).returncode == 2
    assert run_doctor("check", "--cache-dir", "c", "--select", "nonsense", "train.py", cwd=tmp_path).returncode == 2
    assert run_doctor("check", "--cache-dir", "c", "train.py", cwd=tmp_path).returncode == 1
    proc = run_doctor("check", "--cache-dir", "c", "--select", "nonsense", "train.py", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown rule selector" in proc.stderr


def test_code_fingerprint_follows_the_rule_sources(tmp_path, monkeypatch):
    """Editing a rule (an editable install, no version bump) must invalidate the cache."""
    import doctor.lint.cache as cache_mod

    folder = tmp_path / "pkg"
    rule = write(folder, "some_rule.py", "X = 1\n")
    monkeypatch.setattr(cache_mod, "_code_folders", lambda: [str(folder)])
    before = cache_mod.code_fingerprint()
    assert cache_mod.code_fingerprint() == before
    with open(rule, "a", encoding="utf-8") as fh:
        fh.write("Y = 2\n")
    assert cache_mod.code_fingerprint() != before
    # And the real folders include the rules package, wherever it is installed from.
    monkeypatch.undo()
    import doctor.rules.static as static_pkg

    assert any(os.path.dirname(static_pkg.__file__).startswith(f) for f in cache_mod._code_folders())
