"""The pre-commit hooks, driven through the real `pre-commit` tool against a temporary git repository.

pre-commit installs a hook repository from a git commit, so the tests commit a snapshot of this working tree
(the package sources and `.pre-commit-hooks.yaml` as they are now, committed or not) into a temporary repo.
`try-repo` always builds a fresh hook environment (twice: the buggy and the clean file); the other cases use
`pre-commit run` with a config file and one shared PRE_COMMIT_HOME, so that environment is built once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

BUGGY = textwrap.dedent(
    """\
    import torch

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    """
)
CLEAN = BUGGY.replace("    loss.backward()\n", "    optimizer.zero_grad()\n    loss.backward()\n")
#: A safe fix: `total += loss` keeps every iteration's graph alive; the fix detaches it.
FIXABLE = textwrap.dedent(
    """\
    import torch

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
    total = 0.0
    for x, y in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss
    print(total)
    """
)

#: pip's words when it cannot reach any package index; only this failure turns into a skip.
_NO_INDEX = (
    "No matching distribution found",
    "Could not find a version that satisfies the requirement",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
)
#: What the snapshot needs to be pip-installable as the hook repository.
_PACKAGE_PARTS = ("doctor/", "rules/", "pyproject.toml", "setup.py", "setup.cfg", "README", "LICENSE", ".pre-commit-hooks.yaml")


def _pre_commit() -> list[str]:
    try:
        import pre_commit  # noqa: F401
    except ImportError:
        pytest.skip("the pre-commit package is not installed (it is in the `test` extra)")
    return [sys.executable, "-m", "pre_commit"]


def _git(*args: str, cwd: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=test@example.com", "-c", "user.name=doctor tests", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def _working_tree_files() -> list[str]:
    """Files of this repository as they are on disk now: tracked or new, minus what git ignores."""
    proc = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
    )
    if proc.returncode == 0:
        return proc.stdout.splitlines()
    out = []
    for folder, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".git", "__pycache__") and not d.endswith(".egg-info")]
        out += [os.path.relpath(os.path.join(folder, n), REPO) for n in names]
    return out


def _snapshot_repo(dest: str) -> str:
    """Commit the package sources and the hooks manifest into a fresh git repository; return its path."""
    os.makedirs(dest)
    for rel in _working_tree_files():
        src = os.path.join(REPO, rel)
        if "__pycache__" in rel or not rel.startswith(_PACKAGE_PARTS) or not os.path.isfile(src):
            continue
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(src, target)
    assert os.path.isfile(os.path.join(dest, ".pre-commit-hooks.yaml"))
    _git("init", "-q", cwd=dest)
    _git("add", "-A", cwd=dest)
    _git("commit", "-q", "-m", "snapshot", cwd=dest)
    return dest


def _project(dest: str, files: dict[str, str]) -> str:
    os.makedirs(dest)
    for name, text in files.items():
        path = os.path.join(dest, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    _git("init", "-q", cwd=dest)
    _git("add", "-A", cwd=dest)
    _git("commit", "-q", "-m", "project", cwd=dest)
    return dest


def _run(cmd: list[str], cwd: str, home: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCTOR_", "PRE_COMMIT"))}
    env["PRE_COMMIT_HOME"] = home
    env["PRE_COMMIT_COLOR"] = "never"
    env["DOCTOR_CACHE_DIR"] = os.path.join(home, "doctor-cache")  # keep the project folders clean
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    output = proc.stdout + proc.stderr
    log = os.path.join(home, "pre-commit.log")
    if os.path.exists(log):
        with open(log, encoding="utf-8", errors="replace") as fh:
            output += fh.read()
    if proc.returncode != 0 and "unexpected error" in output and any(m in output for m in _NO_INDEX):
        pytest.skip("pre-commit could not build the hook environment: no package index reachable for libcst/click")
    return proc


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory) -> str:
    _pre_commit()
    return _snapshot_repo(str(tmp_path_factory.mktemp("hooks") / "doctor-snapshot"))


@pytest.fixture(scope="module")
def configured(tmp_path_factory, hook_repo):
    """A project whose .pre-commit-config.yaml uses both hooks from the snapshot, with one shared PRE_COMMIT_HOME."""
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=hook_repo, capture_output=True, text=True, check=True).stdout.strip()
    home = str(tmp_path_factory.mktemp("pre-commit-home"))

    def make(name: str, files: dict[str, str], hook: str = "doctor") -> str:
        config = f"repos:\n  - repo: {hook_repo}\n    rev: {rev}\n    hooks:\n      - id: {hook}\n"
        return _project(str(tmp_path_factory.mktemp(name) / "project"), {".pre-commit-config.yaml": config, **files})

    return make, home


def test_manifest_is_valid(hook_repo):
    proc = subprocess.run([*_pre_commit(), "validate-manifest", ".pre-commit-hooks.yaml"], cwd=hook_repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_try_repo_fails_on_the_bug_and_passes_on_clean_code(tmp_path, hook_repo):
    project = _project(str(tmp_path / "project"), {"train.py": BUGGY, "clean.py": CLEAN})
    proc = _run([*_pre_commit(), "try-repo", hook_repo, "doctor", "--files", "train.py"], project, str(tmp_path / "home1"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Failed" in out and "train.py:9:5" in out and "missing-zero-grad" in out, out
    assert "clean.py" not in out
    proc = _run([*_pre_commit(), "try-repo", hook_repo, "doctor", "--files", "clean.py"], project, str(tmp_path / "home2"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Passed" in out and "missing-zero-grad" not in out, out


def _assert_no_torch_in_hook_envs(home: str) -> None:
    """The hook environment got doctor and its dependencies, not torch (the linter never imports it)."""
    envs = [os.path.join(root, d) for root, dirs, _ in os.walk(home) for d in dirs if d.startswith("py_env-")]
    assert envs, f"no python hook environment under {home}"
    for env in envs:
        python = os.path.join(env, "bin", "python")
        if not os.path.exists(python):
            python = os.path.join(env, "Scripts", "python.exe")
        probe = subprocess.run(
            [python, "-c", "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('doctor') is not None)"],
            capture_output=True,
            text=True,
        )
        assert probe.stdout.split() == ["True", "True"], (env, probe.stdout, probe.stderr)


def test_hook_with_zero_and_many_files(configured):
    make, home = configured
    files = {f"pkg/clean_{i}.py": CLEAN for i in range(12)}
    files["pkg/buggy.py"] = BUGGY
    files["README.md"] = "# not python\n"
    project = make("many", files)
    # Zero files: pre-commit skips the hook when no python file is passed.
    proc = _run([*_pre_commit(), "run", "--files", "README.md"], project, home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no files to check" in proc.stdout and "Skipped" in proc.stdout, proc.stdout
    # One clean file, then all thirteen (pre-commit may split them across parallel invocations).
    proc = _run([*_pre_commit(), "run", "--files", "pkg/clean_3.py"], project, home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _run([*_pre_commit(), "run", "--all-files"], project, home)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pkg/buggy.py:9:5" in proc.stdout and "missing-zero-grad" in proc.stdout, proc.stdout
    assert "clean_" not in proc.stdout.split("- exit code", 1)[-1]
    _assert_no_torch_in_hook_envs(home)


def test_fix_hook_applies_the_safe_fix(configured):
    make, home = configured
    project = make("fix", {"train.py": FIXABLE}, hook="doctor-fix")
    proc = _run([*_pre_commit(), "run", "--all-files"], project, home)
    out = proc.stdout + proc.stderr
    # pre-commit fails a hook that modified files, so the user reviews the change before committing.
    assert proc.returncode == 1, out
    assert "files were modified by this hook" in out, out
    with open(os.path.join(project, "train.py"), encoding="utf-8") as fh:
        fixed = fh.read()
    assert fixed != FIXABLE and "total += loss\n" not in fixed, fixed
    # Second run: nothing left to fix, nothing left to report.
    proc = _run([*_pre_commit(), "run", "--all-files"], project, home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
