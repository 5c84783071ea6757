"""Scaffold a static rule: its module with every page section to fill in, and a fixture pair.

    python scripts/new_rule.py my-rule-name DR123 --summary "One line: what it finds."
        [--severity error|warning|info] [--fixable safe|unsafe] [--family core] [--root .]

writes ``rules/static/my_rule_name.py`` and ``fixtures/static/<family>/my_rule_name.py`` (must fire) and
``..._ok.py`` (a look-alike that must stay silent). Every section starts as a ``TODO``: the test suite fails
until each is written (``tests/test_rule_examples.py`` rejects a page that still says TODO, runs the
examples through ``doctor check`` and the fixtures through the rules). See docs/architecture.md.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

TEMPLATE = '''"""{name}: {summary_lower}"""

from __future__ import annotations

from doctor.core.findings import {imports}
from doctor.lint.rule import Rule


class {cls}(Rule):
    name = "{name}"
    code = "{code}"
    severity = Severity.{severity}{fixable_line}
    # The page (doctor.core.page): `doctor explain`, docs/rules.md and SARIF help render these sections.
    summary = "{summary}"
    why = """
        TODO: why the mistake is wrong: what happens to training, and why nothing errors.
    """
    known_problems = """
        TODO: when the rule stays silent on a real mistake, and when it may speak on correct code
        (read them off check()).
    """
    # A complete program with the mistake: `doctor check FILE --select {name}` must report it.
    bad = """
        import torch
        from torch import nn

        # TODO: the mistake, in a real training loop
    """
    # The same program without the mistake: must stay silent.
    good = """
        import torch
        from torch import nn

        # TODO: the same program, fixed
    """{fixed_block}
    # Snippets (whole programs): `fires` must each yield a finding of this rule, `silent` none.
    fires = (
        """
import torch
# TODO: a shape of the mistake
""",
    )
    silent = (
        """
import torch
# TODO: a look-alike that is correct
""",
    )

    def check(self, ctx):
        # Read ctx.model (doctor.analysis.model.TrainingModel); yield self.finding(ctx, node, message[, fix=...]).
        return ()
'''

FIXED_BLOCK = '''
    # What `doctor check --fix{flag}` makes of `bad`, byte for byte.
    fixed = """
        import torch
        from torch import nn

        # TODO: the bad example after the fix
    """
    fix_safety = """
        TODO: what the fix changes, and why that is safe (or why it is unsafe: it changes training numerics...).
    """'''

FIXTURE_BAD = '''"""{name}: TODO a realistic training script with the mistake."""

import torch

# TODO: mark each line that must be reported with a comment like the one below
# expect: {name}
'''

FIXTURE_OK = '''"""{name}: TODO a realistic look-alike that is correct and must stay silent."""

import torch
'''


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="kebab-case rule name, e.g. my-rule-name")
    parser.add_argument("code", help="rule code, e.g. DR123")
    parser.add_argument("--summary", required=True, help="one line: what the rule finds")
    parser.add_argument("--severity", choices=["error", "warning", "info"], default="warning")
    parser.add_argument("--fixable", choices=["safe", "unsafe"], default=None)
    parser.add_argument("--family", default="core", help="fixture folder under fixtures/static/ (default: core)")
    parser.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        help="repository root (default: this checkout)")
    args = parser.parse_args(argv)

    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", args.name):
        parser.error(f"the name must be kebab-case: {args.name!r}")
    if not re.fullmatch(r"DR\d{3}", args.code):
        parser.error(f"the code must look like DR123: {args.code!r}")
    if "\n" in args.summary or '"' in args.summary:
        parser.error("the summary is one line without double quotes")
    module = args.name.replace("-", "_")
    rule_path = os.path.join(args.root, "rules", "static", f"{module}.py")
    fixture_dir = os.path.join(args.root, "fixtures", "static", args.family)
    paths = [rule_path, os.path.join(fixture_dir, f"{module}.py"), os.path.join(fixture_dir, f"{module}_ok.py")]
    existing = [p for p in paths if os.path.exists(p)]
    if existing:
        print(f"not overwriting: {', '.join(existing)}", file=sys.stderr)
        return 1

    fixable = args.fixable
    text = TEMPLATE.format(
        name=args.name,
        code=args.code,
        cls="".join(w.capitalize() for w in args.name.split("-")),
        summary=args.summary,
        summary_lower=args.summary[:1].lower() + args.summary[1:],
        severity=args.severity.upper(),
        imports="Applicability, Severity" if fixable else "Severity",
        fixable_line=f"\n    fixable = Applicability.{fixable.upper()}" if fixable else "",
        fixed_block=FIXED_BLOCK.format(flag=" --unsafe-fixes" if fixable == "unsafe" else "") if fixable else "",
    )
    os.makedirs(fixture_dir, exist_ok=True)
    os.makedirs(os.path.dirname(rule_path), exist_ok=True)
    contents = [text, FIXTURE_BAD.format(name=args.name), FIXTURE_OK.format(name=args.name)]
    for path, content in zip(paths, contents):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(content)
        print(f"wrote {os.path.relpath(path, args.root)}")
    print("next: fill in every TODO, implement check(), then python scripts/gen_docs.py and python -m pytest")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
