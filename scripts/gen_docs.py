"""Regenerate docs/rules.md and the rule table in README.md from the rules themselves.

    python scripts/gen_docs.py          # write
    python scripts/gen_docs.py --check  # exit 1 when the files are out of date (used by the tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

from doctor.catalog import pages
from doctor.core.page import render

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- rules:start -->", "<!-- rules:end -->"


def rule_table() -> str:
    lines = ["| code | name | kind | severity | default | fix | what it catches |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for i in pages():
        default = "on" if i.default_enabled else "off"
        sev = i.severity if i.kind == "static" else "—"
        lines.append(f"| {i.code} | [`{i.name}`](docs/rules.md#{i.name}) | {i.kind} | {sev} | {default} | {i.fixable} | {i.summary} |")
    return "\n".join(lines)


def rules_doc() -> str:
    """docs/rules.md: every page, rendered exactly as `doctor explain` and SARIF help show it."""
    out = ["# Rules", "", "Generated from the rule modules by `python scripts/gen_docs.py`; `doctor explain NAME` prints the same pages.", ""]
    every = pages()
    for kind in ("static", "runtime"):
        if kind == "runtime":
            out += ["# Runtime checks (`doctor probe`)", "", "See [probe.md](probe.md) for how the probe runs and what it records.", ""]
        for page in every:
            if page.kind == kind:
                out += [f"## {page.name}", "", render(page), ""]
    return "\n".join(out)


def main() -> int:
    check = "--check" in sys.argv
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    new_readme = f"{head}{START}\n{rule_table()}\n{END}{tail}"
    docs = rules_doc()
    stale = []
    if new_readme != readme:
        stale.append("README.md")
    rules_md = ROOT / "docs" / "rules.md"
    if not rules_md.exists() or rules_md.read_text(encoding="utf-8") != docs:
        stale.append("docs/rules.md")
    if check:
        if stale:
            print(f"out of date: {', '.join(stale)} (run python scripts/gen_docs.py)")
            return 1
        return 0
    (ROOT / "README.md").write_text(new_readme, encoding="utf-8")
    rules_md.write_text(docs, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
