"""What both ways of starting the script share: the checks before a run, the child's environment, the output
reader, and killing what a run left behind. The parent never imports torch here."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
from typing import IO, Optional

from doctor.probe.options import OptionsError, ProbeOptions

#: Lines of the script's own output kept for the report.
OUTPUT_TAIL_LINES = 40


class ProbeUsageError(Exception):
    """The probe cannot run as asked (missing script, bad option, no CUDA for --device cuda): exit 2."""


def check_can_run(script: str, options: ProbeOptions, python: Optional[str]) -> None:
    """Raise ``ProbeUsageError`` for a missing script, options that cannot run, or no torch to run it with."""
    if not os.path.isfile(script):
        raise ProbeUsageError(f"no such script: {script}")
    try:
        options.validate()
    except OptionsError as exc:
        raise ProbeUsageError(str(exc)) from None
    if python is None:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            # The linter is installed without torch (pre-commit, CI); the probe needs it to run the script.
            raise ProbeUsageError(
                "the probe needs PyTorch in this environment: install it (e.g. pip install 'torch-doctor[probe]')"
            )


def child_env(options: ProbeOptions) -> dict[str, str]:
    """The environment of the probe's child process(es): the user's, with GPUs hidden for ``--device cpu``,
    unbuffered output, and this very doctor importable."""
    env = dict(os.environ)
    if options.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # hide GPUs: the script's own `cuda.is_available()` then says no
    env["PYTHONUNBUFFERED"] = "1"  # the output tail should hold the last lines before a crash
    # The child must import this very doctor, wherever the parent was imported from.
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
    return env


def read_output(proc: subprocess.Popen, tail: "collections.deque[str]", echo: Optional[IO[str]],
                also: Optional["collections.deque[str]"] = None) -> threading.Thread:
    """Start a thread that keeps the last lines of the process's output (and copies them to ``echo``)."""

    def run() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.decode("utf-8", "replace")
            tail.append(text.rstrip("\n"))
            if also is not None:
                also.append(text.rstrip("\n"))
            if echo is not None:
                try:
                    echo.write(text)
                    echo.flush()
                except (OSError, ValueError):
                    pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def kill_group(pid: int) -> None:
    """SIGKILL the process group that ``pid`` leads (a child started in a session of its own, and everything it
    started: DataLoader workers...); nothing when it is gone."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass


def signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"
