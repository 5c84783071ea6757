"""scripts/new_rule.py scaffolds a rule with every page section (each a TODO the suite rejects) and a fixture pair."""

import importlib.util
import os

import pytest

from doctor.core.findings import Applicability
from doctor.core.page import REQUIRED
from doctor.lint.rule import Rule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "new_rule.py")


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NEW_RULE = _module(SCRIPT, "new_rule_script")


def _scaffold(tmp_path, *args) -> int:
    """The script's exit status (argparse usage errors exit 2)."""
    try:
        return NEW_RULE.main([*args, "--root", str(tmp_path)])
    except SystemExit as exc:
        return exc.code


def _load(path) -> type:
    spec = importlib.util.spec_from_file_location("scaffolded_rule", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Rule) and v is not Rule)


@pytest.mark.parametrize("fixable", [None, "safe", "unsafe"])
def test_scaffold_has_every_section(tmp_path, fixable):
    assert _scaffold(tmp_path, "my-new-rule", "DR999", "--summary", "A thing that is wrong.",
                     *(["--fixable", fixable] if fixable else [])) == 0
    rule = _load(tmp_path / "rules" / "static" / "my_new_rule.py")
    page = rule.page()
    assert (page.name, page.code, page.summary) == ("my-new-rule", "DR999", "A thing that is wrong.")
    assert not page.missing(), page.missing()
    for section in REQUIRED[1:]:
        assert "TODO" in getattr(page, section), section
    if fixable:
        assert rule.fixable is Applicability(fixable) and "TODO" in page.fixed and "TODO" in page.fix_safety
    else:
        assert rule.fixable is None and rule.fixed is None and rule.fix_safety is None
    assert rule.fires and rule.silent and list(rule().check(None)) == []
    fixtures = tmp_path / "fixtures" / "static" / "core"
    assert "# expect: my-new-rule" in (fixtures / "my_new_rule.py").read_text()
    assert "expect:" not in (fixtures / "my_new_rule_ok.py").read_text()


def test_scaffold_refuses_bad_names_and_overwrites(tmp_path, capsys):
    assert _scaffold(tmp_path, "MyRule", "DR999", "--summary", "x") == 2
    assert _scaffold(tmp_path, "my-rule", "X1", "--summary", "x") == 2
    assert _scaffold(tmp_path, "my-rule", "DR999", "--summary", "x") == 0
    assert _scaffold(tmp_path, "my-rule", "DR999", "--summary", "x") == 1
    assert "not overwriting" in capsys.readouterr().err
