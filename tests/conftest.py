import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "fixtures")


@pytest.fixture
def run_doctor():
    """Run the installed `doctor` CLI in a subprocess (the way users and CI run it)."""
    import subprocess

    def run(*args, cwd=None, input=None, env=None):
        full_env = dict(os.environ)
        full_env.pop("DOCTOR_DEBUG", None)
        if env:
            full_env.update(env)
        return subprocess.run(
            [sys.executable, "-m", "doctor", *args], cwd=cwd, capture_output=True, text=True, input=input, env=full_env, timeout=300
        )

    return run
