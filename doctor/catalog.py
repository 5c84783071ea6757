"""Everything doctor checks, as pages: the static rules and the probe's runtime checks.

The one place that knows both kinds (``lint`` finds the static rules, ``rules/runtime`` holds the checks);
the CLI, the SARIF report and ``scripts/gen_docs.py`` read their pages from here.
"""

from __future__ import annotations

from typing import Optional

from doctor.core.page import Page, Sections
from doctor.lint.registry import load_modules, static_rules


def static_pages() -> list[Page]:
    """The page of every static rule, in code order."""
    return [rule.page() for rule in static_rules().values()]


def runtime_pages() -> list[Page]:
    """The page of every runtime check (a module of ``doctor.rules.runtime`` with a ``CHECK`` and a ``PAGE``)."""
    try:
        modules = list(load_modules("doctor.rules.runtime"))
    except Exception:  # the probe is optional; listing rules must not fail because of it
        return []
    pages = []
    for module in modules:
        check = getattr(module, "CHECK", None)
        if check is None:
            continue
        sections = getattr(module, "PAGE", None) or Sections(why="", known_problems="", bad="", good="")
        pages.append(
            Page.build(
                name=check.name,
                code=check.code,
                kind="runtime",
                severity="error",
                default_enabled=True,
                fixable="-",
                summary=check.summary,
                why=sections.why,
                known_problems=sections.known_problems,
                bad=sections.bad,
                good=sections.good,
            )
        )
    return sorted(pages, key=lambda p: p.code)


def pages(runtime: bool = True) -> list[Page]:
    """Static rules first, then (with ``runtime``) the runtime checks."""
    return static_pages() + (runtime_pages() if runtime else [])


def find(key: str) -> Optional[Page]:
    """A rule's or check's page by name or code (case-insensitive)."""
    key_l = key.strip().lower()
    return next((p for p in pages() if key_l in (p.name, p.code.lower())), None)
