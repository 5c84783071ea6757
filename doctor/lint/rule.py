"""The base class of a static rule.

A rule is one small class in one module under ``rules/static`` (installed as ``doctor.rules.static``).
It carries its own documentation and its own examples: ``fires`` snippets must produce a finding of the
rule, ``silent`` snippets must not. The test suite and ``doctor explain`` are generated from them.
"""

from __future__ import annotations

import ast
from typing import ClassVar, Iterable, Optional

from doctor.core.findings import Applicability, Finding, Fix, Severity
from doctor.lint.context import FileContext


class Rule:
    """Base class of a static rule. Subclasses set the class attributes and implement ``check``."""

    name: ClassVar[str]
    code: ClassVar[str]
    severity: ClassVar[Severity] = Severity.ERROR
    default_enabled: ClassVar[bool] = True
    #: None, or the applicability of the fixes this rule offers.
    fixable: ClassVar[Optional[Applicability]] = None
    summary: ClassVar[str]
    why: ClassVar[str]
    bad: ClassVar[str]
    good: ClassVar[str]
    #: Snippets (whole programs) that must yield at least one finding of this rule.
    fires: ClassVar[tuple[str, ...]] = ()
    #: Snippets that must yield none.
    silent: ClassVar[tuple[str, ...]] = ()
    #: True for a rule whose verdict rests on something being absent anywhere in the file (a seed, a saved
    #: scheduler state): it cannot judge a part of a file, so it does not run on big files checked in parts.
    whole_file: ClassVar[bool] = False

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
