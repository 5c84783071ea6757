"""Whole-program fixtures: every `# expect: rule-name` comment must be matched by a finding on that line,
and no other finding may appear (files without expectations must stay silent).

Fixtures live under fixtures/static/**.py; all rules are enabled (default-off ones too).
"""

import os
import re

import pytest

from doctor.lint.config import Settings
from doctor.lint.engine import check_file
from doctor.lint.registry import static_rules

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "static")
EXPECT = re.compile(r"#\s*expect:\s*([a-z0-9\-, ]+)")
FILES = sorted(
    os.path.relpath(os.path.join(d, f), ROOT)
    for d, _, fs in os.walk(ROOT)
    for f in fs
    if f.endswith((".py", ".ipynb"))
)


def expectations(path):
    out = set()
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh, 1):
            m = EXPECT.search(line)
            if m:
                for rule in m.group(1).split(","):
                    if rule.strip():
                        out.add((i, rule.strip()))
    return out


@pytest.mark.parametrize("rel", FILES)
def test_fixture(rel):
    path = os.path.join(ROOT, rel)
    rules = [r for r in static_rules().values() if r.name not in ("unused-suppression",)]
    result = check_file(path, rules, Settings())
    assert result.error is None, result.error
    got = {(f.line, f.rule) for f in result.findings}
    want = expectations(path)
    missing = want - got
    extra = got - want
    detail = "\n".join(f"  {f.line}:{f.column} {f.rule}: {f.message}" for f in result.findings)
    assert not missing and not extra, f"missing={sorted(missing)} extra={sorted(extra)}\nfindings:\n{detail}"


def test_there_are_fixtures():
    assert len(FILES) >= 10
