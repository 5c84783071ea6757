"""Helpers to run rules on snippets: used by the test suite and handy in a REPL."""

from __future__ import annotations

import textwrap
from typing import Optional

from doctor.lint.config import Settings
from doctor.lint.engine import check_source
from doctor.core.findings import Finding
from doctor.lint.registry import Rule, static_rules


def check_snippet(code: str, rules: Optional[list[type[Rule]]] = None, path: str = "snippet.py") -> list[Finding]:
    """All findings of ``rules`` (default: every rule, default-off ones included) on a code snippet."""
    code = textwrap.dedent(code)
    if rules is None:
        rules = list(static_rules().values())
    result = check_source(path, code.encode("utf-8"), rules, Settings())
    if result.error:
        raise AssertionError(result.error)
    return result.findings
