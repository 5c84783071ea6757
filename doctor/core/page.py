"""One documentation page per rule or check, and the one renderer of it.

Every static rule and every runtime check is documented in the same shape (ruff's sections):

- ``summary``        — *What it does*: one line, also used in the rule tables;
- ``why``            — *Why is this bad?*;
- ``known_problems`` — *Known problems*: when it stays silent on a real mistake, and when it may speak
  on correct code;
- ``bad``            — *Example*: a complete program with the mistake;
- ``good``           — *Use instead*: the same program without it;
- ``fixed``          — for fixable rules only: what ``doctor check --fix`` makes of ``bad``;
- ``fix_safety``     — for fixable rules only: *Fix safety*, why the fix is safe or why it is not.

``render`` turns a ``Page`` into markdown. ``doctor explain``, ``docs/rules.md``, SARIF ``help`` and
``doctor rules --format json`` all show its output (or its fields), so they cannot drift apart.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import asdict, dataclass
from typing import Any, Optional

#: The sections every page must fill (``fixed`` and ``fix_safety`` as well, for a fixable rule).
REQUIRED = ("summary", "why", "known_problems", "bad", "good")

#: Section headings, in page order.
HEADINGS = {
    "summary": "What it does",
    "why": "Why is this bad?",
    "known_problems": "Known problems",
    "bad": "Example",
    "good": "Use instead",
    "fix_safety": "Fix safety",
}


def clean_prose(text: Optional[str]) -> str:
    """A prose section as written in a module (indented, triple-quoted): dedented, stripped."""
    return textwrap.dedent(text or "").strip()


def clean_code(text: Optional[str]) -> str:
    """An example program as written in a module: dedented, stripped, ending with one newline.

    This is the exact content of the file the example tests check, and of the page's code blocks.
    """
    body = textwrap.dedent(text or "").strip("\n").rstrip()
    return body + "\n" if body else ""


def number(x: float) -> str:
    """A threshold as a page shows it: ``1e-06`` -> ``1e-6``, ``100000.0`` -> ``1e5``, ``0.25`` -> ``0.25``."""
    text = f"{x:g}"
    return re.sub(r"e([+-])0*(\d+)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), text)


@dataclass(frozen=True)
class Sections:
    """The hand-written sections of a runtime check's page (its name, code and summary are its ``CHECK``'s)."""

    why: str
    known_problems: str
    bad: str
    good: str


@dataclass(frozen=True)
class Page:
    """Everything doctor says about one rule or check; sections normalised with ``clean_prose``/``clean_code``."""

    name: str
    code: str
    kind: str  # "static" or "runtime"
    severity: str
    default_enabled: bool
    #: "safe", "unsafe", or "-" (no fix).
    fixable: str
    summary: str
    why: str
    known_problems: str
    bad: str
    good: str
    fixed: str = ""
    fix_safety: str = ""

    @classmethod
    def build(cls, *, name: str, code: str, kind: str, severity: str, default_enabled: bool, fixable: str,
              summary: str, why: str, known_problems: str, bad: str, good: str,
              fixed: Optional[str] = None, fix_safety: Optional[str] = None) -> "Page":
        return cls(
            name=name, code=code, kind=kind, severity=severity, default_enabled=default_enabled, fixable=fixable,
            summary=clean_prose(summary), why=clean_prose(why), known_problems=clean_prose(known_problems),
            bad=clean_code(bad), good=clean_code(good), fixed=clean_code(fixed), fix_safety=clean_prose(fix_safety),
        )

    def missing(self) -> list[str]:
        """The sections this page lacks (empty when the page is complete)."""
        gaps = [s for s in REQUIRED if not getattr(self, s)]
        if self.fixable != "-":
            gaps += [s for s in ("fixed", "fix_safety") if not getattr(self, s)]
        return gaps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



def meta_line(page: Page) -> str:
    if page.kind == "runtime":
        return f"`{page.code}` · runtime check of `doctor probe`"
    default = "on by default" if page.default_enabled else "off by default (enable with `--select`)"
    if page.fixable == "safe":
        fix = "safe fix (`doctor check --fix`)"
    elif page.fixable == "unsafe":
        fix = "unsafe fix (`doctor check --fix --unsafe-fixes`)"
    else:
        fix = "no fix"
    return f"`{page.code}` · {page.severity} · {default} · {fix}"


def title(page: Page) -> str:
    """The line above a page: what `doctor explain` prints first."""
    return f"{page.name} ({page.code})"


def render(page: Page) -> str:
    """The page as markdown, without its title; ends without a newline."""

    def block(source: str) -> str:
        return f"```python\n{source}```"

    parts = [meta_line(page)]
    for section in ("summary", "why", "known_problems"):
        parts.append(f"### {HEADINGS[section]}\n\n{getattr(page, section)}")
    parts.append(f"### {HEADINGS['bad']}\n\n{block(page.bad)}")
    parts.append(f"### {HEADINGS['good']}\n\n{block(page.good)}")
    if page.fixable != "-":
        flags = "--fix" if page.fixable == "safe" else "--fix --unsafe-fixes"
        result = (
            f"the code under *{HEADINGS['good']}*." if page.fixed == page.good
            else f"this:\n\n{block(page.fixed)}"
        )
        parts.append(f"### {HEADINGS['fix_safety']}\n\n{page.fix_safety}\n\n`doctor check {flags}` turns the example into {result}")
    return "\n\n".join(parts)
