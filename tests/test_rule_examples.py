"""Generated from each rule's own examples: `fires` snippets must be reported, `silent` ones must not."""

import re

import pytest

from doctor.lint.registry import static_rules
from doctor.lint.testing import check_snippet

RULES = list(static_rules().values())
FIRES = [(r, i, code) for r in RULES for i, code in enumerate(r.fires)]
SILENT = [(r, i, code) for r in RULES for i, code in enumerate(r.silent)]


@pytest.mark.parametrize("rule,i,code", FIRES, ids=[f"{r.name}-{i}" for r, i, _ in FIRES])
def test_fires(rule, i, code):
    found = [f for f in check_snippet(code) if f.rule == rule.name]
    assert found, f"{rule.name} did not fire on example {i}:\n{code}"


@pytest.mark.parametrize("rule,i,code", SILENT, ids=[f"{r.name}-{i}" for r, i, _ in SILENT])
def test_silent(rule, i, code):
    found = [f for f in check_snippet(code) if f.rule == rule.name]
    assert not found, f"{rule.name} fired on silent example {i}: {[(f.line, f.message) for f in found]}\n{code}"


def test_every_rule_is_documented_and_has_both_kinds_of_example():
    names, codes = set(), set()
    for r in RULES:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", r.name), r.name
        assert re.fullmatch(r"DR\d{3}", r.code), r.code
        assert r.name not in names and r.code not in codes, f"duplicate {r.name} {r.code}"
        names.add(r.name)
        codes.add(r.code)
        for attr in ("summary", "why", "bad", "good"):
            assert getattr(r, attr).strip(), f"{r.name} lacks {attr}"
        assert r.fires and r.silent, f"{r.name} needs firing and silent examples"
