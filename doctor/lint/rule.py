"""The base class of a static rule.

A rule is one small class in one module under ``rules/static`` (installed as ``doctor.rules.static``).
It carries its own page (``doctor.core.page``: summary, why, known problems, a bad and a good example,
and for a fixable rule the fixed example and the fix's safety) and its own test snippets: ``fires``
snippets must produce a finding of the rule, ``silent`` snippets must not. ``doctor explain``,
``docs/rules.md``, SARIF help and the test suite are generated from them; the documented examples are run
through ``doctor check`` as tests (``tests/test_rule_examples.py``).
"""

from __future__ import annotations

import ast
from typing import ClassVar, Iterable, Optional

from doctor.core.findings import Applicability, Finding, Fix, Severity
from doctor.core.page import Page
from doctor.lint.context import FileContext


class Rule:
    """Base class of a static rule. Subclasses set the class attributes and implement ``check``."""

    name: ClassVar[str]
    code: ClassVar[str]
    severity: ClassVar[Severity] = Severity.ERROR
    default_enabled: ClassVar[bool] = True
    #: None, or the applicability of the fixes this rule offers. A fixable rule declares ``fixed``.
    fixable: ClassVar[Optional[Applicability]] = None
    # The page (doctor.core.page): every section is required.
    summary: ClassVar[str]
    why: ClassVar[str]
    known_problems: ClassVar[str]
    #: A complete program with the mistake: ``doctor check --select NAME`` on it reports this rule.
    bad: ClassVar[str]
    #: The same program without it: silent.
    good: ClassVar[str]
    #: Fixable rules only: the exact result of ``doctor check --fix [--unsafe-fixes]`` on ``bad``.
    fixed: ClassVar[Optional[str]] = None
    #: Fixable rules only: why the fix is safe, or what it may change (why it is unsafe).
    fix_safety: ClassVar[Optional[str]] = None
    #: Snippets (whole programs) that must yield at least one finding of this rule.
    fires: ClassVar[tuple[str, ...]] = ()
    #: Snippets that must yield none.
    silent: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def page(cls) -> Page:
        return Page.build(
            name=cls.name,
            code=cls.code,
            kind="static",
            severity=cls.severity.value,
            default_enabled=cls.default_enabled,
            fixable=cls.fixable.value if cls.fixable else "-",
            summary=cls.summary,
            why=cls.why,
            known_problems=getattr(cls, "known_problems", ""),
            bad=cls.bad,
            good=cls.good,
            fixed=cls.fixed,
            fix_safety=cls.fix_safety,
        )

    def check(self, ctx: FileContext) -> Iterable[Finding]:  # pragma: no cover - abstract
        raise NotImplementedError

    def finding(
        self,
        ctx: FileContext,
        node: ast.AST,
        message: str,
        *,
        fix: Optional[Fix] = None,
        severity: Optional[Severity] = None,
        evidence: Optional[dict] = None,
    ) -> Finding:
        return ctx.make_finding(self, node, message, fix=fix, severity=severity, evidence=evidence)
