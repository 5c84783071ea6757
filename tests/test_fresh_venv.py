"""The linter installs into a fresh virtual environment without torch and runs with every output format."""

import json
import os
import subprocess
import sys
import venv

import pytest

from conftest import FIXTURES, REPO

BUGGY = os.path.join(FIXTURES, "cli", "buggy.py")


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    env_dir = tmp_path_factory.mktemp("fresh") / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = str(env_dir / ("Scripts" if os.name == "nt" else "bin") / "python")
    p = subprocess.run([python, "-m", "pip", "install", "-q", REPO], capture_output=True, text=True, timeout=600)
    if p.returncode != 0 and ("No matching distribution" in p.stderr or "Could not find a version" in p.stderr):
        pytest.skip(f"no package index reachable to install libcst/click: {p.stderr.strip().splitlines()[-1]}")
    assert p.returncode == 0, p.stderr[-2000:]
    return python


def test_torch_is_not_installed(fresh_env):
    p = subprocess.run([fresh_env, "-c", "import torch"], capture_output=True, text=True)
    assert p.returncode != 0 and "No module named 'torch'" in p.stderr


@pytest.mark.parametrize("fmt", ["text", "json", "github", "sarif"])
def test_check_runs_with_every_format(fresh_env, fmt):
    doctor = os.path.join(os.path.dirname(fresh_env), "doctor")
    p = subprocess.run([doctor, "check", BUGGY, "--format", fmt, "--no-cache"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "DR101" in p.stdout
    if fmt in ("json", "sarif"):
        json.loads(p.stdout)


def test_rules_and_explain_without_torch(fresh_env):
    doctor = os.path.join(os.path.dirname(fresh_env), "doctor")
    assert "missing-zero-grad" in subprocess.run([doctor, "rules", "--all"], capture_output=True, text=True).stdout
    assert "## Why is this bad?" in subprocess.run([doctor, "explain", "DR102"], capture_output=True, text=True).stdout
    # The probe needs torch: without it, a clear message and a usage error, not a traceback.
    p = subprocess.run([doctor, "probe", BUGGY], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
