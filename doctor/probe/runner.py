"""Run the user's script in a child process, collect what it streams, stop it, and judge the result.

The parent never imports torch (start-up stays cheap); it spawns ``python -m doctor.probe.child`` in its
own process group, reads events from a pipe and the script's output from another, and kills the whole
group when the child reports N steps (after a short grace, in case the script swallowed the stop), at
the timeout, or when the caller is interrupted.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import IO, Any, Optional

from doctor.probe.options import OptionsError, ProbeOptions
from doctor.probe.stream import FD_ENV, parse_line
from doctor.probe.trace import COMPLETED, CRASHED, STOPPED, TIMEOUT, ProbeRun, ScriptError

#: Seconds the child may keep running after it reported the last step: enough to flush and exit by itself.
STOP_GRACE_S = 1.0
#: Seconds a timed-out child gets to flush after SIGTERM before the group is killed.
TERM_GRACE_S = 1.0
#: Lines of the script's own output kept for the report.
OUTPUT_TAIL_LINES = 40


class ProbeUsageError(Exception):
    """The probe cannot run as asked (missing script, bad option, no CUDA for --device cuda): exit 2."""


@dataclass
class ProbeResult:
    """A finished probe: the run, the verdict of every check, and the findings that point at source."""

    run: ProbeRun
    checks: list[Any] = field(default_factory=list)  # list[doctor.probe.checks.CheckResult]

    @property
    def findings(self) -> list[Any]:
        return [f for c in self.checks for f in c.findings]

    @property
    def failed(self) -> bool:
        """Exit 1: a check failed, or the script crashed, timed out or never trained."""
        if self.run.status in (CRASHED, TIMEOUT) or self.run.steps_observed == 0:
            return True
        return any(c.status == "fail" for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        from doctor.probe.payload import result_to_dict

        return result_to_dict(self)


def run_probe(
    script: str,
    args: Optional[list[str]] = None,
    options: Optional[ProbeOptions] = None,
    *,
    echo: Optional[IO[str]] = None,
    python: Optional[str] = None,
    **overrides: Any,
) -> ProbeResult:
    """Run ``script`` with ``args`` under the probe and evaluate every runtime check.

    ``options``: a ``ProbeOptions`` (defaults otherwise); keyword ``overrides`` replace its fields
    (``run_probe(path, steps=8, device="cpu")``). With ``options.recipe``, the recipe runs of their own
    (``overfit-batch``, ``lr-range``) follow the normal run, one child process each.
    ``echo``: a text stream the script's stdout/stderr are copied to as they come (None: keep only the tail).
    Raises ``ProbeUsageError`` for a missing script, a bad option, or ``device="cuda"`` without a GPU.
    """
    from doctor.probe.checks import evaluate_all

    opts = replace(options or ProbeOptions(), **overrides)
    run = collect(script, args or [], opts.normal_run(), echo=echo, python=python)
    for recipe_opts in opts.recipe_runs():
        if run.steps_observed == 0:
            break  # the script does not train as it is: a recipe run would only repeat that
        run.recipe_runs[recipe_opts.mode] = collect(script, args or [], recipe_opts, echo=None, python=python)
    return ProbeResult(run=run, checks=evaluate_all(run))


def collect(
    script: str,
    args: list[str],
    options: Optional[ProbeOptions] = None,
    echo: Optional[IO[str]] = None,
    python: Optional[str] = None,
) -> ProbeRun:
    """Spawn one child, stream its events until it ends or is stopped, and fold them into a ``ProbeRun``."""
    options = options or ProbeOptions()
    if not os.path.isfile(script):
        raise ProbeUsageError(f"no such script: {script}")
    try:
        options.validate()
    except OptionsError as exc:
        raise ProbeUsageError(str(exc)) from None
    steps, device, timeout = options.steps, options.device, options.timeout
    if python is None:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            # The linter is installed without torch (pre-commit, CI); the probe needs it to run the script.
            raise ProbeUsageError(
                "the probe needs PyTorch in this environment: install it (e.g. pip install 'torch-doctor[probe]')"
            )

    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # hide GPUs: the script's own `cuda.is_available()` then says no
    env["PYTHONUNBUFFERED"] = "1"  # the output tail should hold the last lines before a crash
    # The child must import this very doctor, wherever the parent was imported from.
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)

    ev_r, ev_w = os.pipe()
    env[FD_ENV] = str(ev_w)
    cmd = [python or sys.executable, "-m", "doctor.probe.child", "--options", options.to_json(), "--",
           os.path.abspath(script), *args]
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(ev_w,), start_new_session=True,
        )
    finally:
        os.close(ev_w)

    events: list[dict[str, Any]] = []
    done_at: list[float] = []  # set by the reader thread when the child reports the last step
    tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)

    def read_events() -> None:
        with os.fdopen(ev_r, "rb") as fh:
            for line in fh:
                ev = parse_line(line)
                if ev is None:
                    continue
                events.append(ev)
                if ev.get("ev") == "done" and not done_at:
                    done_at.append(time.monotonic())

    def read_output() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.decode("utf-8", "replace")
            tail.append(text.rstrip("\n"))
            if echo is not None:
                try:
                    echo.write(text)
                    echo.flush()
                except (OSError, ValueError):
                    pass

    readers = [threading.Thread(target=read_events, daemon=True), threading.Thread(target=read_output, daemon=True)]
    for t in readers:
        t.start()

    timed_out = stopped_by_us = False
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now - t0 > timeout:
                timed_out = True
                _terminate(proc)
                break
            if done_at and now - done_at[0] > STOP_GRACE_S:
                stopped_by_us = True
                _kill_group(proc)
                break
            time.sleep(0.02)
    except KeyboardInterrupt:
        _kill_group(proc)
        raise
    proc.wait()
    wall = time.monotonic() - t0
    _kill_group(proc)  # leftovers of a finished script (DataLoader workers) must not outlive the probe
    for t in readers:
        t.join(timeout=2.0)

    if any(ev.get("ev") == "usage_error" for ev in events):
        msg = next(ev["message"] for ev in events if ev.get("ev") == "usage_error")
        raise ProbeUsageError(msg)

    run = ProbeRun.from_events(events, script=script, args=args, steps_requested=steps)
    run.options = options.to_dict()
    run.wall_seconds = round(wall, 3)
    run.output_tail = list(tail)
    run.exit_code = proc.returncode
    _set_status(run, events, proc.returncode, timed_out, stopped_by_us, timeout)
    return run


def _set_status(run: ProbeRun, events: list[dict[str, Any]], code: int, timed_out: bool, stopped_by_us: bool, timeout: float) -> None:
    exit_ev = next((ev for ev in reversed(events) if ev.get("ev") == "exit"), None)
    reached = any(ev.get("ev") == "done" for ev in events)
    if reached and (stopped_by_us or (exit_ev and exit_ev.get("kind") == "stopped") or code in (0, -signal.SIGKILL)):
        run.status = STOPPED
    elif timed_out:
        run.status = TIMEOUT
        run.error = ScriptError(type="Timeout", message=f"the script was stopped after the {timeout:g} s timeout "
                                f"with {run.steps_observed} optimizer step(s) observed (hang, or too slow for --steps)")
    elif exit_ev is not None and exit_ev.get("kind") == "completed":
        run.status = COMPLETED
    elif exit_ev is not None:
        run.status = CRASHED
    else:
        run.status = CRASHED
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = " (the kernel's OOM killer sends SIGKILL when host memory runs out)" if -code == signal.SIGKILL else ""
            run.error = ScriptError(type=name, message=f"the script was killed by {name}{why}")
        else:
            run.error = ScriptError(type="ProcessExit", message=f"the probe child exited with status {code} without a report")


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM first: the child then sends the steps it has not flushed yet; SIGKILL the group after a grace."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=TERM_GRACE_S)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child and everything it started (DataLoader workers...): it leads its own process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass

