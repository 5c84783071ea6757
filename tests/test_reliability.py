"""Nothing lost, nothing surprising: one bad file never costs the others, paths and outputs that cannot be used
are reported, workers die with their parent, skipped files are counted as skipped, config mistakes are loud,
files doctor writes have the modes and owners people expect."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

import doctor.lint.engine as engine
from doctor.cli.main import main
from doctor.lint.registry import static_rules

from conftest import FIXTURES

BUGGY = os.path.join(FIXTURES, "cli", "buggy.py")
CLEAN = os.path.join(FIXTURES, "cli", "clean.py")


@pytest.fixture
def two_files(tmp_path):
    """buggy.py (one DR101) and victim.py (a training script the test breaks in one stage or another)."""
    shutil.copy(BUGGY, tmp_path / "buggy.py")
    shutil.copy(CLEAN, tmp_path / "victim.py")
    return tmp_path


def run_in_process(args, cwd):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args, catch_exceptions=False)
    finally:
        os.chdir(old)


def _boom(*args, **kwargs):
    raise RuntimeError("injected failure")


def _only_for_victim(real, path_of):
    def patched(*args, **kwargs):
        if "victim" in str(path_of(*args, **kwargs)):
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    return patched


STAGES = ["read", "decode", "parse", "check", "suppress"]


def _inject(stage, monkeypatch):
    if stage == "read":
        monkeypatch.setattr(engine, "read_bytes", _only_for_victim(engine.read_bytes, lambda path: path))
    elif stage == "decode":
        real = engine.decode_python
        monkeypatch.setattr(engine, "decode_python", lambda data: _boom() if b"victim" in data else real(data))
    elif stage == "parse":
        real = engine.parse
        monkeypatch.setattr(engine, "parse", lambda source: _boom() if "victim" in source.text else real(source))
    elif stage == "check":
        rule = static_rules()["missing-zero-grad"]
        real = rule.check
        monkeypatch.setattr(rule, "check", lambda self, ctx: _boom() if "victim" in ctx.path else real(self, ctx))
    elif stage == "suppress":
        real = engine._apply_suppressions
        monkeypatch.setattr(engine, "_apply_suppressions", lambda ctx, f, r: _boom() if "victim" in ctx.path else real(ctx, f, r))


@pytest.mark.parametrize("stage", STAGES)
def test_a_failure_in_any_stage_costs_only_that_file(stage, two_files, monkeypatch):
    (two_files / "victim.py").write_text("# victim\n" + (two_files / "victim.py").read_text())
    _inject(stage, monkeypatch)
    base = ["check", "buggy.py", "victim.py", "--no-cache", "-j", "1"]
    text = run_in_process(base + ["--no-color"], two_files)
    assert "buggy.py:8:5: DR101" in text.output  # the other file's finding survives
    assert "victim.py: error: internal error" in text.output and "injected failure" in text.output
    assert text.exit_code == 2  # an internal error is a doctor bug: exit 2, with the full report
    data = json.loads(run_in_process(base + ["--format", "json"], two_files).output)
    assert [f["path"] for f in data["findings"]] == ["buggy.py"]
    [error] = data["errors"]
    assert error["path"] == "victim.py" and "injected failure" in error["message"]
    sarif = json.loads(run_in_process(base + ["--format", "sarif"], two_files).output)
    run = sarif["runs"][0]
    assert [r["ruleId"] for r in run["results"]] == ["DR101"]
    [note] = run["invocations"][0]["toolExecutionNotifications"]
    assert "injected failure" in note["message"]["text"]
    assert note["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "victim.py"


def _notebook(source) -> str:
    return json.dumps({"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "source": source}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


@pytest.mark.parametrize("source", [["import torch\n", 3], ["x", None], 42, [["nested"]]])
def test_a_notebook_with_a_non_text_source_is_one_error(source, tmp_path, run_doctor):
    shutil.copy(BUGGY, tmp_path / "buggy.py")
    (tmp_path / "bad.ipynb").write_text(_notebook(source))
    for fmt in ("text", "json", "sarif"):
        r = run_doctor("check", ".", "--no-cache", "--format", fmt, cwd=tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr and "internal error" not in r.stdout + r.stderr, r.stderr
        assert "DR101" in r.stdout and "the source of cell 1 is not text" in r.stdout, (fmt, r.stdout)


def test_a_missing_path_among_others_is_reported_and_the_rest_checked(two_files, run_doctor):
    r = run_doctor("check", "buggy.py", "gone.py", "victim.py", "--no-cache", "--format", "json", cwd=two_files)
    data = json.loads(r.stdout)
    assert r.returncode == 2  # a usage error, after the report
    assert [f["path"] for f in data["findings"]] == ["buggy.py"]
    assert data["errors"] == [{"path": "gone.py", "message": "no such file or folder"}]
    assert data["summary"]["checked"] == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_folder_is_reported(two_files, run_doctor):
    locked = two_files / "locked"
    locked.mkdir()
    shutil.copy(BUGGY, locked / "t.py")
    locked.chmod(0)
    try:
        r = run_doctor("check", ".", "--no-cache", "--format", "json", cwd=two_files)
    finally:
        locked.chmod(0o755)
    data = json.loads(r.stdout)
    assert r.returncode == 1 and any("cannot read folder" in e["message"] for e in data["errors"])


def test_output_to_a_missing_folder_is_a_usage_error(two_files, run_doctor):
    r = run_doctor("check", "buggy.py", "-o", "/nonexistent/dir/report.json", cwd=two_files)
    assert r.returncode == 2
    assert r.stderr.startswith("doctor: error: cannot write the report to /nonexistent/dir/report.json: no such folder")
    assert "internal error" not in r.stderr and ".doctor-" not in r.stderr


# -- workers die with their parent ----------------------------------------------------------------------------
_SLOW_DRIVER = textwrap.dedent(
    """
    import sys, time
    import doctor.lint.engine as engine
    engine.check_file = lambda *a, **k: time.sleep(120)  # inherited by the forked workers
    from doctor.cli.main import main
    sys.argv = ["doctor", "check", sys.argv[1], "--no-cache", "-j", "2"]
    main()
    """
)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _runs_driver(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"engine.check_file = lambda" in fh.read()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_their_parent(sig, tmp_path):
    for i in range(40):  # enough files for the parallel path
        (tmp_path / f"m{i}.py").write_text("import torch\nx = torch.zeros(1)\n")
    parent = subprocess.Popen([sys.executable, "-c", _SLOW_DRIVER, str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.2)
            workers = [p for p in _children(parent.pid) if _alive(p)]
        assert len(workers) >= 2, "the parallel run never started its workers"
        time.sleep(0.5)  # let them pick up their (endless) tasks
        parent.send_signal(sig)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not [p for p in workers if _alive(p)], "workers outlived their parent"
    finally:  # never leave a worker behind, even when the test fails
        if parent.poll() is None:
            parent.kill()
        for p in set(workers) | set(_children(parent.pid)):
            if _alive(p) and _runs_driver(p):  # (never a process that merely reuses the number)
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass


# -- skipped is not checked; not Python is said once ------------------------------------------------------------
def test_files_without_pytorch_code_are_counted_as_skipped(tmp_path, run_doctor):
    (tmp_path / "utils.py").write_text("def add(a, b):\n    return a + b\n")
    (tmp_path / "broken_util.py").write_text("def add(a, b)\n    return a + b\n")  # no torch: never parsed
    shutil.copy(CLEAN, tmp_path / "train.py")
    r = run_doctor("check", ".", "--no-cache", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.strip() == "All checks passed (1 file checked, 2 skipped (no PyTorch code))."
    data = json.loads(run_doctor("check", ".", "--no-cache", "--format", "json", cwd=tmp_path).stdout)
    assert (data["summary"]["files"], data["summary"]["checked"], data["summary"]["skipped"]) == (3, 1, 2)
    # The cache remembers that a file was skipped, not checked.
    run_doctor("check", ".", cwd=tmp_path)
    assert "1 file checked, 2 skipped" in run_doctor("check", ".", cwd=tmp_path).stdout


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("blob.py", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data"),
        ("utf16.py", "import torch\nx = 1\n".encode("utf-16"), "UTF-16"),
        ("utf16_nobom.py", "import torch\nx = 1\n".encode("utf-16-le"), "UTF-16"),
    ],
)
def test_a_file_that_is_not_python_text_is_reported_once(name, data, message, tmp_path, run_doctor):
    (tmp_path / name).write_bytes(data)
    r = run_doctor("check", name, "--no-cache", "--format", "json", cwd=tmp_path)
    out = json.loads(r.stdout)
    assert r.returncode == 1
    assert out["findings"] == []  # no syntax-error finding on top of the error
    [error] = out["errors"]
    assert error["path"] == name and message in error["message"] and error["message"].startswith("not Python text")
    assert out["summary"]["checked"] == 0 and out["summary"]["skipped"] == 0


def test_a_notebook_of_another_language_is_skipped(tmp_path, run_doctor):
    nb = json.loads(_notebook(["library(torch)\n", "x <- torch_randn(2)\n"]))
    nb["metadata"] = {"kernelspec": {"language": "R", "name": "ir"}}
    (tmp_path / "r.ipynb").write_text(json.dumps(nb))
    r = run_doctor("check", "r.ipynb", "--no-cache", cwd=tmp_path)
    assert r.returncode == 0 and "0 files checked, 1 skipped (a r notebook)" in r.stdout


# -- configuration surprises ------------------------------------------------------------------------------------
def test_an_invalid_pyproject_is_an_error_not_ignored(two_files, run_doctor):
    (two_files / "pyproject.toml").write_text('[tool.doctor]\nignore = ["DR101"\n')
    r = run_doctor("check", "buggy.py", "--no-cache", cwd=two_files)
    assert r.returncode == 2 and "invalid TOML in" in r.stderr and "pyproject.toml" in r.stderr


@pytest.mark.parametrize("where", [".", "..", "src"])
def test_the_cache_needs_a_folder_of_its_own(where, two_files, run_doctor):
    (two_files / "src").mkdir()
    (two_files / "src" / "notes.txt").write_text("mine")
    (two_files / "pyproject.toml").write_text(f'[tool.doctor]\ncache-dir = "{where}"\n')
    r = run_doctor("check", "buggy.py", cwd=two_files)
    assert r.returncode == 2 and "cache-dir" in r.stderr and "folder of its own" in r.stderr
    assert not (two_files / ".gitignore").exists() and not (two_files / "CACHEDIR.TAG").exists()
    assert not (two_files / "src" / ".gitignore").exists()


def test_the_cache_folder_doctor_made_is_accepted_again(two_files, run_doctor):
    (two_files / "pyproject.toml").write_text('[tool.doctor]\ncache-dir = "cache"\n')
    assert run_doctor("check", "buggy.py", cwd=two_files).returncode == 1
    assert run_doctor("check", "buggy.py", cwd=two_files).returncode == 1
    assert sorted(os.listdir(two_files / "cache")) == [".gitignore", "CACHEDIR.TAG", "v1"]


# -- modes, links, owners ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_doctor_creates_follow_the_umask(umask, two_files):
    want = 0o666 & ~umask
    proc = subprocess.run(
        [sys.executable, "-m", "doctor", "check", "buggy.py", "--format", "sarif", "-o", "doctor.sarif"],
        cwd=two_files, capture_output=True, text=True, preexec_fn=lambda: os.umask(umask),
    )
    assert proc.returncode == 1, proc.stderr
    assert stat.S_IMODE(os.stat(two_files / "doctor.sarif").st_mode) == want
    entries = [os.path.join(d, f) for d, _, fs in os.walk(two_files / ".doctor_cache") for f in fs]
    assert entries and all(stat.S_IMODE(os.stat(e).st_mode) == want for e in entries)


FIXABLE = "import torch\nopt = torch.optim.SGD(m.parameters(), lr=0.1)\nfor x in data:\n    loss = m(x)\n    loss.backward()\n    opt.step()\n    total += loss\n"


def test_fix_keeps_hard_links(tmp_path, run_doctor):
    a = tmp_path / "train.py"
    a.write_text(FIXABLE)
    b = tmp_path / "hardlink.py"
    os.link(a, b)
    inode = os.stat(a).st_ino
    r = run_doctor("check", "train.py", "--fix", "--no-cache", "--select", "loss-accumulated-as-tensor", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "total += loss.detach()" in a.read_text()
    assert b.read_text() == a.read_text() and os.stat(a).st_ino == inode and os.stat(a).st_nlink == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_fix_keeps_the_owner(tmp_path, run_doctor):
    a = tmp_path / "train.py"
    a.write_text(FIXABLE)
    os.chown(a, 4321, 4321)
    os.chmod(a, 0o664)
    r = run_doctor("check", "train.py", "--fix", "--no-cache", "--select", "loss-accumulated-as-tensor", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    st = os.stat(a)
    assert "loss.detach()" in a.read_text() and (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 4321, 0o664)


def test_when_the_owner_cannot_be_kept_the_file_is_rewritten_in_place(tmp_path, monkeypatch):
    from doctor.core import fsutil

    a = tmp_path / "t.py"
    a.write_text("old\n")
    inode = os.stat(a).st_ino
    real_stat = os.stat

    def foreign_owner(path, *args, **kwargs):  # the file belongs to someone else, and chown is refused
        st = real_stat(path, *args, **kwargs)
        if str(path) == str(a):
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, 4321, 4321, *st[6:]))
        return st

    monkeypatch.setattr(fsutil.os, "stat", foreign_owner)
    monkeypatch.setattr(fsutil.os, "chown", _boom_os)
    assert fsutil.replace_contents(str(a), b"new\n") == "in place"
    assert a.read_bytes() == b"new\n" and real_stat(a).st_ino == inode
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".doctor-")]


def _boom_os(*args, **kwargs):
    raise PermissionError(1, "Operation not permitted")
