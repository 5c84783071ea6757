"""One page per rule and check, rendered once: `doctor explain`, docs/rules.md, SARIF help and
`doctor rules --format json` show the same text."""

import ast
import json
import os
import re

import pytest
from click.testing import CliRunner

from doctor.catalog import pages
from doctor.cli.main import main
from doctor.core.page import render, title

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = pages()
IDS = [p.name for p in PAGES]


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code in (0, 1), result.output
    return result.output


@pytest.fixture(scope="module")
def rules_md() -> dict[str, str]:
    """docs/rules.md cut into its pages: the text under each `## name` heading."""
    text = open(os.path.join(ROOT, "docs", "rules.md"), encoding="utf-8").read()
    out = {}
    for block in re.split(r"\n(?=## )", text)[1:]:
        heading, _, body = block.partition("\n\n")
        body = re.split(r"\n# ", body)[0]  # the runtime section's heading follows the last static page
        out[heading[3:]] = body.rstrip("\n")
    return out


@pytest.fixture(scope="module")
def sarif_help(tmp_path_factory) -> dict[str, str]:
    path = tmp_path_factory.mktemp("sarif") / "train.py"
    path.write_text("import torch\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("sarif") / "report.sarif"
    _cli("check", str(path), "--format", "sarif", "--no-cache", "-o", str(out))
    rules = json.loads(out.read_text(encoding="utf-8"))["runs"][0]["tool"]["driver"]["rules"]
    assert all(r["help"]["text"] == r["help"]["markdown"] for r in rules)
    return {r["properties"]["doctorName"]: r["help"]["text"] for r in rules}


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_explain_docs_and_sarif_show_the_same_page(page, rules_md, sarif_help):
    explained = _cli("explain", page.code)
    head, _, body = explained.rstrip("\n").partition("\n\n")
    assert head == title(page)
    assert body == rules_md[page.name] == sarif_help[page.name]
    # ...and that text is the whole page: every section, the examples verbatim.
    for section in ("What it does", "Why is this bad?", "Known problems", "Example", "Use instead"):
        assert f"### {section}" in body
    for text in (page.summary, page.why, page.known_problems, page.bad, page.good):
        assert text and text in body
    if page.fixable != "-":
        assert "### Fix safety" in body and page.fix_safety in body and page.fixed in body
    else:
        assert "### Fix safety" not in body
    assert body == render(page)


def test_rules_json_carries_every_page(tmp_path):
    data = json.loads(_cli("rules", "--all", "--format", "json"))
    assert [d["name"] for d in data] == IDS
    for entry, page in zip(data, PAGES):
        assert entry == page.to_dict()
        for key in ("summary", "why", "known_problems", "bad", "good"):
            assert entry[key], f"{page.name}: {key} is empty"
        if entry["kind"] == "static":
            assert "import torch" in entry["bad"] or "from torch" in entry["bad"]
        assert ("fixed" in entry) and ("fix_safety" in entry)


@pytest.mark.parametrize("page", [p for p in PAGES if p.kind == "runtime"], ids=lambda p: p.name)
def test_runtime_pages_show_numbers_not_constant_names(page):
    """A threshold is shown as its value: `doctor explain DP105` says 1000, not EXPLODE_WARN."""
    path = os.path.join(ROOT, "rules", "runtime", page.name.replace("-", "_") + ".py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    constants = [
        t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
        if isinstance(t, ast.Name) and t.id.isupper() and t.id not in ("CHECK", "PAGE")
    ]
    text = render(page)
    assert not [c for c in constants if c in text], f"{page.name}'s page names constants instead of their values"


def test_gradient_flow_page_has_its_thresholds():
    from doctor.core.page import number
    from doctor.rules.runtime import gradient_flow as g

    body = _cli("explain", "DP105")
    for value in (g.VANISH_RATIO, g.EXPLODE_WARN, g.EXPLODE_FAIL):
        assert f" {number(value)} " in body
    for value in (g.GROWTH_WARN, g.GROWTH_FAIL):
        assert f" {number(value)}x " in body
