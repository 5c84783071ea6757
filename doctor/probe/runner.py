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

from doctor.probe.options import ProbeOptions
from doctor.probe.process import OUTPUT_TAIL_LINES, ProbeUsageError, check_can_run, child_env, read_output
from doctor.probe.stream import FD_ENV, parse_line
from doctor.probe.trace import COMPLETED, CRASHED, STOPPED, TIMEOUT, ProbeRun, ScriptError

#: Seconds the child may keep running after it reported the last step: enough to flush and exit by itself.
STOP_GRACE_S = 1.0
#: Seconds a timed-out child gets to flush after SIGTERM before the group is killed.
TERM_GRACE_S = 1.0


@dataclass
class ProbeResult:
    """A finished probe: the run, the verdict of every check, and the findings that point at source."""

    run: ProbeRun
    checks: list[Any] = field(default_factory=list)  # list[doctor.probe.checks.CheckResult]
    #: Distributed mode: each rank's own check results, by rank (``checks`` holds them merged).
    rank_checks: dict[int, list[Any]] = field(default_factory=dict)

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
    (``overfit-batch``, ``lr-range``) follow the normal run, one child process each. With
    ``options.nproc_per_node`` the script runs under torchrun, one child per rank (``doctor.probe.launch``), and
    the result holds the merged run and checks (``doctor.probe.ranks``).
    ``echo``: a text stream the script's stdout/stderr are copied to as they come (None: keep only the tail).
    Raises ``ProbeUsageError`` for a missing script, a bad option, or ``device="cuda"`` without a GPU.
    """
    from doctor.probe.checks import evaluate_all

    opts = replace(options or ProbeOptions(), **overrides)
    if opts.distributed:
        from doctor.probe.launch import collect_ranks
        from doctor.probe.ranks import evaluate_ranks

        run = collect_ranks(script, args or [], opts.normal_run(), echo=echo, python=python)
        checks, per_rank = evaluate_ranks(run)
        return ProbeResult(run=run, checks=checks, rank_checks=per_rank)
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
    check_can_run(script, options, python)
    steps, timeout = options.steps, options.timeout
    env = child_env(options)

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

    readers = [threading.Thread(target=read_events, daemon=True)]
    readers[0].start()
    readers.append(read_output(proc, tail, echo))

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
        where = run.error if run.error is not None and run.error.type == "SIGTERM" else None  # where it was stopped
        run.error = ScriptError(type="Timeout", message=f"the script was stopped after the {timeout:g} s timeout "
                                f"with {run.steps_observed} optimizer step(s) observed (hang, or too slow for --steps)",
                                path=where.path if where else None, line=where.line if where else None,
                                traceback=where.traceback if where else [])
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

