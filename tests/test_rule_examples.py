"""Every rule's own examples are tests.

- ``fires``/``silent`` snippets: each ``fires`` snippet yields a finding of the rule, each ``silent`` one none.
- The documented page examples run as a user runs them, through the real CLI on a file holding the example
  alone: ``doctor check FILE --select RULE`` reports the rule on ``bad`` and not on ``good`` (nor on
  ``fixed``), and ``doctor check --fix [--unsafe-fixes]`` turns ``bad`` into ``fixed`` byte for byte.
- The page itself: every section is there, and a rule is fixable exactly when it declares a fixed example.
"""

import ast
import json
import re

import pytest
from click.testing import CliRunner

from doctor.catalog import runtime_pages
from doctor.cli.main import main
from doctor.core.source import worth_parsing
from doctor.lint.registry import static_rules
from doctor.lint.testing import check_snippet

RULES = list(static_rules().values())
FIRES = [(r, i, code) for r in RULES for i, code in enumerate(r.fires)]
SILENT = [(r, i, code) for r in RULES for i, code in enumerate(r.silent)]
FIXABLE = [r for r in RULES if r.fixable is not None]
IDS = [r.name for r in RULES]


@pytest.mark.parametrize("rule,i,code", FIRES, ids=[f"{r.name}-{i}" for r, i, _ in FIRES])
def test_fires(rule, i, code):
    found = [f for f in check_snippet(code) if f.rule == rule.name]
    assert found, f"{rule.name} did not fire on example {i}:\n{code}"


@pytest.mark.parametrize("rule,i,code", SILENT, ids=[f"{r.name}-{i}" for r, i, _ in SILENT])
def test_silent(rule, i, code):
    found = [f for f in check_snippet(code) if f.rule == rule.name]
    assert not found, f"{rule.name} fired on silent example {i}: {[(f.line, f.message) for f in found]}\n{code}"


# -- the documented examples, through the CLI ------------------------------------------------------------
def _check(tmp_path, code: str, rule, *flags: str):
    """``doctor check example.py --select RULE --format json --no-cache`` on a file holding ``code`` alone:
    (exit code, the JSON report, the file's bytes afterwards)."""
    path = tmp_path / "example.py"
    path.write_bytes(code.encode("utf-8"))
    report = tmp_path / "report.json"
    result = CliRunner().invoke(
        main, ["check", str(path), "--select", rule.name, "--format", "json", "--no-cache", "-o", str(report), *flags]
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(report.read_text(encoding="utf-8")), path.read_bytes()


def _of(report, rule):
    return [(f["line"], f["message"]) for f in report["findings"] if f["rule"] == rule.name]


@pytest.mark.parametrize("rule", RULES, ids=IDS)
def test_bad_example_fires(rule, tmp_path):
    page = rule.page()
    code, report, _ = _check(tmp_path, page.bad, rule)
    assert _of(report, rule), f"`doctor check --select {rule.name}` is silent on the documented bad example:\n{page.bad}"
    assert not report["errors"], report["errors"]
    assert code == (1 if rule.severity.value == "error" else 0)


SILENT_EXAMPLES = [(r, "good") for r in RULES] + [(r, "fixed") for r in FIXABLE]


@pytest.mark.parametrize("rule,kind", SILENT_EXAMPLES, ids=[f"{r.name}-{k}" for r, k in SILENT_EXAMPLES])
def test_good_example_is_silent(rule, kind, tmp_path):
    example = getattr(rule.page(), kind)
    code, report, _ = _check(tmp_path, example, rule)
    assert not _of(report, rule), f"{rule.name} fires on its documented {kind} example: {_of(report, rule)}"
    assert not report["errors"] and code == 0


@pytest.mark.parametrize("rule", FIXABLE, ids=[r.name for r in FIXABLE])
def test_fix_turns_bad_into_fixed(rule, tmp_path):
    page = rule.page()
    unsafe = page.fixable == "unsafe"
    if unsafe:  # an unsafe fix is never applied without --unsafe-fixes
        _, _, after = _check(tmp_path, page.bad, rule, "--fix")
        assert after == page.bad.encode("utf-8"), f"{rule.name}: --fix alone applied an unsafe fix"
    _, report, after = _check(tmp_path, page.bad, rule, "--fix", *(["--unsafe-fixes"] if unsafe else []))
    assert after.decode("utf-8") == page.fixed, f"{rule.name}: the fix output differs from the declared `fixed` example"
    assert not _of(report, rule), f"{rule.name} still fires after its fix"


# -- the page ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES, ids=IDS)
def test_every_rule_has_a_whole_page_and_examples_that_are_programs(rule):
    page = rule.page()
    assert not page.missing(), f"{rule.name} lacks page sections: {page.missing()}"
    assert "\n" not in page.summary, f"{rule.name}: the summary is one line"
    unfinished = [k for k, v in page.to_dict().items() if isinstance(v, str) and "TODO" in v]
    assert not unfinished, f"{rule.name}: sections still marked TODO (scripts/new_rule.py): {unfinished}"
    for kind in ("bad", "good", "fixed"):
        example = getattr(page, kind)
        if not example:
            continue
        assert worth_parsing(example.encode()), f"{rule.name}: the {kind} example is skipped before parsing (no torch?)"
        if not (rule.name == "syntax-error" and kind == "bad"):
            ast.parse(example)
        assert "import torch" in example or "from torch" in example, f"{rule.name}: the {kind} example imports nothing"


@pytest.mark.parametrize("rule", RULES, ids=IDS)
def test_fixable_exactly_when_a_fixed_example_is_declared(rule):
    assert (rule.fixable is None) == (rule.fixed is None), (
        f"{rule.name}: fixable={rule.fixable} but fixed example {'missing' if rule.fixed is None else 'declared'}"
    )
    assert (rule.fixable is None) == (rule.fix_safety is None), f"{rule.name}: fix_safety belongs to fixable rules only"


def test_every_runtime_check_has_a_whole_page():
    pages = runtime_pages()
    assert pages, "no runtime check found"
    for page in pages:
        assert not page.missing(), f"{page.name} lacks page sections: {page.missing()}"
        assert not [k for k, v in page.to_dict().items() if isinstance(v, str) and "TODO" in v], page.name
        assert page.fixable == "-" and not page.fixed


def test_every_rule_has_a_unique_name_code_and_both_kinds_of_snippet():
    names, codes = set(), set()
    for r in RULES:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", r.name), r.name
        assert re.fullmatch(r"DR\d{3}", r.code), r.code
        assert r.name not in names and r.code not in codes, f"duplicate {r.name} {r.code}"
        names.add(r.name)
        codes.add(r.code)
        assert r.fires and r.silent, f"{r.name} needs firing and silent examples"
