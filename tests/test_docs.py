"""Docs are generated from the rules; this keeps them from drifting."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rule_docs_are_up_to_date():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen_docs.py"), "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_readme_has_the_two_setup_commands_and_ci_runs_its_test_command():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "doctor check fixtures/static" in readme
    test_cmd = 'pip install torch==2.13.0 && pip install -e ".[test,probe]" && python -m pytest'
    assert test_cmd in readme
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert "python -m pip install -q torch==2.13.0" in ci
    assert 'python -m pip install -q -e ".[test,probe]"' in ci
    assert "python -m pytest" in ci
