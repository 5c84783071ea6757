"""Distributed mode: run the script under ``torch.distributed.run`` (torchrun), the probe in every rank.

The parent starts ``python -m doctor.probe.torchrun [torchrun options] -m doctor.probe.child ...`` in a session
of its own: torchrun starts one probe child per local rank, each child connects to the parent's Unix socket
(torchrun does not hand descriptors on to its workers), says which rank it is, and streams its events as in
the single-process mode. The parent folds each rank's events into a ``ProbeRun`` of its own and merges them
(``doctor.probe.ranks``).

Stopping. A rank that reaches N steps stops itself (``ProbeStop``), as one process does. When every rank is
done the ranks exit and torchrun with them. A rank that fails (its exit event, or its connection closing without
one: killed by a signal) gives the others ``FAILURE_GRACE_S`` to notice (a collective with a dead peer raises)
and report, then everything is stopped. At the timeout the parent first asks every live rank for its Python
stacks (``faulthandler`` on a signal: it answers even while blocked in a collective), so the report says where
each rank was. Stopping is SIGTERM to the ranks (each flushes and says where it was) and to torchrun, then
SIGKILL to each rank's process group (torchrun starts every rank in a session of its own) and to torchrun's.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Optional

from doctor.probe.options import ProbeOptions
from doctor.probe.process import OUTPUT_TAIL_LINES, ProbeUsageError, check_can_run, child_env, kill_group, read_output
from doctor.probe.ranks import RankOutcome, merge_ranks, parse_stacks
from doctor.probe.stream import SOCKET_ENV, STACKS_ENV, parse_line, stack_signal
from doctor.probe.trace import ProbeRun

#: Seconds the ranks get after the last of them reported its last step, to flush and exit by themselves.
STOP_GRACE_S = 1.0
#: Seconds the other ranks may go without an event once one rank is done before they are stopped: a rank blocked
#: in a collective with a rank that has stopped never moves again (gloo raises at once; NCCL may wait for its
#: own timeout). Only ranks that have made a step count: one still starting up is not blocked.
IDLE_AFTER_DONE_S = 5.0
#: Seconds the other ranks get after one failed: a collective with the dead rank raises in them, and they report.
FAILURE_GRACE_S = 3.0
#: Seconds SIGTERMed ranks and torchrun get to flush and exit before SIGKILL.
TERM_GRACE_S = 1.5
#: Seconds the ranks get to write their stacks after the signal.
STACK_GRACE_S = 0.3
#: Longest folder for the events socket (``sun_path`` holds about 100 characters on Linux and macOS).
SOCKET_DIR_CHARS = 80
#: What torchrun says of a failed worker: its exit code and pid (kept from its output to name a signal).
_EXITCODE = [re.compile(r"exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)"),
             re.compile(r"exitcode:\s*(-?\d+)\)\s*local_rank:\s*\d+\s*\(pid:\s*(\d+)\)")]


@dataclass
class _Conn:
    """One rank's connection: its events, and when (parent's clock) it reported done, exited or hung up."""

    events: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    done_at: Optional[float] = None
    exit_at: Optional[float] = None
    eof_at: Optional[float] = None
    last_at: float = 0.0

    @property
    def pid(self) -> Optional[int]:
        return self.info.get("pid")

    @property
    def stepped(self) -> bool:
        return any(e.get("ev") == "step" for e in self.events)

    @property
    def ended(self) -> bool:
        return self.exit_at is not None or self.eof_at is not None

    @property
    def failed(self) -> bool:
        """Ended without reaching its last step: an exception, a non-zero exit, or killed (no exit event)."""
        if self.done_at is not None:
            return False
        if self.eof_at is not None and self.exit_at is None:
            return True
        ev = next((e for e in reversed(self.events) if e.get("ev") == "exit"), None)
        return ev is not None and ev.get("kind") in ("crash", "exit")


def collect_ranks(
    script: str,
    args: list[str],
    options: ProbeOptions,
    echo: Optional[IO[str]] = None,
    python: Optional[str] = None,
) -> ProbeRun:
    """Run the script on ``options.nproc_per_node`` ranks of this node under torchrun; the merged ``ProbeRun``
    (rank 0's, with every rank's own run under ``ranks`` and the job under ``distributed``)."""
    check_can_run(script, options, python)
    if not hasattr(socket, "AF_UNIX"):
        raise ProbeUsageError("--nproc-per-node needs Unix domain sockets (Linux, macOS) for the ranks' events")
    tmp = tempfile.mkdtemp(prefix="doctor-probe-")
    if len(tmp) > SOCKET_DIR_CHARS and os.path.isdir("/tmp"):  # a socket path has ~100 characters at most
        os.rmdir(tmp)
        tmp = tempfile.mkdtemp(prefix="doctor-", dir="/tmp")
    try:
        return _collect(script, args, options, echo, python, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _collect(script: str, args: list[str], options: ProbeOptions, echo: Optional[IO[str]], python: Optional[str],
             tmp: str) -> ProbeRun:
    sock_path = os.path.join(tmp, "events.sock")
    stacks_dir = os.path.join(tmp, "stacks")
    os.mkdir(stacks_dir)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(64)
    server.settimeout(0.1)

    env = child_env(options)
    env[SOCKET_ENV] = sock_path
    env[STACKS_ENV] = stacks_dir
    launcher = [python or sys.executable, "-m", "doctor.probe.torchrun", *options.torchrun_args()]
    cmd = [*launcher, "-m", "doctor.probe.child", "--options", options.to_json(), "--", os.path.abspath(script), *args]
    conns: list[_Conn] = []
    lock = threading.Lock()
    closing = threading.Event()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def read_rank(sock: socket.socket, conn: _Conn) -> None:
        with sock, sock.makefile("rb") as fh:
            for line in fh:
                ev = parse_line(line)
                if ev is None:
                    continue
                now = time.monotonic()
                with lock:
                    conn.events.append(ev)
                    conn.last_at = now
                    kind = ev.get("ev")
                    if kind == "rank":
                        conn.info = ev
                    elif kind == "done" and conn.done_at is None:
                        conn.done_at = now
                    elif kind == "exit" and conn.exit_at is None:
                        conn.exit_at = now
        with lock:
            conn.eof_at = time.monotonic()

    readers: list[threading.Thread] = []

    def accept() -> None:
        while not closing.is_set():
            try:
                sock, _ = server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(None)
            conn = _Conn(last_at=time.monotonic())
            with lock:
                conns.append(conn)
            t = threading.Thread(target=read_rank, args=(sock, conn), daemon=True)
            t.start()
            readers.append(t)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
    launcher_lines: collections.deque[str] = collections.deque(maxlen=400)
    out_reader = read_output(proc, tail, echo, launcher_lines)

    timed_out = stopped_after_failure = stopped_by_us = False
    expected = options.nproc_per_node or 1
    first_failure: Optional[float] = None
    try:
        while proc.poll() is None:
            now = time.monotonic()
            with lock:
                snap = list(conns)
            if now - t0 > options.timeout:
                timed_out = True
                _stop(proc, snap, lock, stacks=True)
                break
            if first_failure is None and any(c.failed for c in snap):
                first_failure = now
            if first_failure is not None and now - first_failure > FAILURE_GRACE_S:
                stopped_after_failure = True
                _stop(proc, snap, lock)
                break
            done = [c for c in snap if c.done_at is not None]
            if done and first_failure is None:
                waiting = [c for c in snap if c.done_at is None and not c.ended]
                all_in = len(snap) >= expected and not waiting
                last_done = max(c.done_at for c in done)  # type: ignore[type-var]
                idle = waiting and all(now - c.last_at > IDLE_AFTER_DONE_S and c.stepped for c in waiting)
                if (all_in and now - last_done > STOP_GRACE_S) or idle:
                    stopped_by_us = True
                    _stop(proc, snap, lock)
                    break
            time.sleep(0.02)
    except KeyboardInterrupt:
        _stop(proc, conns, lock)
        raise
    finally:
        proc.wait()
        wall = time.monotonic() - t0
        with lock:
            snap = list(conns)
        for c in snap:  # a rank's leftovers (DataLoader workers) must not outlive the probe
            if c.pid:
                kill_group(int(c.pid))
        kill_group(proc.pid)
        closing.set()
        acceptor.join(timeout=1.0)
        for t in list(readers) + [out_reader]:
            t.join(timeout=2.0)
        server.close()

    codes = _exit_codes(launcher_lines)
    outcomes = []
    for c in snap:
        if c.info.get("rank") is None:
            continue
        stack_file = os.path.join(stacks_dir, f"rank-{c.info['rank']}.txt")
        stacks = ""
        if os.path.exists(stack_file):
            with open(stack_file, encoding="utf-8", errors="replace") as fh:
                stacks = fh.read()
        outcomes.append(RankOutcome(
            events=c.events, info=c.info, ended_at=(c.exit_at or c.eof_at or (t0 + wall)) - t0,
            exit_code=codes.get(int(c.pid)) if c.pid else None, stacks=parse_stacks(stacks, script) if stacks else None,
        ))
    return merge_ranks(
        outcomes, script=script, args=args, options=options, expected=expected, timed_out=timed_out,
        stopped_by_us=stopped_by_us, stopped_after_failure=stopped_after_failure, wall=wall,
        launcher_code=proc.returncode, output_tail=list(tail), launcher=[os.path.basename(launcher[0]), *launcher[1:]],
    )


def _stop(proc: subprocess.Popen, conns: list[_Conn], lock: threading.Lock, stacks: bool = False) -> None:
    """Stop the ranks and torchrun: stacks first when asked (a hang), SIGTERM (each rank flushes and says where it
    was), then SIGKILL to whatever is left."""
    with lock:
        live = [int(c.pid) for c in conns if c.pid and not c.ended]
    if stacks and live:
        for pid in live:
            _signal(pid, stack_signal())
        time.sleep(STACK_GRACE_S)
    for pid in live:
        _signal(pid, signal.SIGTERM)
    _signal(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_S
    while time.monotonic() < deadline:
        with lock:
            still = [c for c in conns if c.pid and int(c.pid) in live and not c.ended]
        if not still and proc.poll() is not None:
            break
        time.sleep(0.02)
    for pid in live:
        kill_group(pid)
    kill_group(proc.pid)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _exit_codes(lines: "collections.deque[str]") -> dict[int, int]:
    """pid -> exit code of the workers torchrun reported as failed (a negative code is the signal that killed it)."""
    text = "\n".join(lines)
    codes: dict[int, int] = {}
    for pattern in _EXITCODE:
        for m in pattern.finditer(text):
            codes.setdefault(int(m.group(2)), int(m.group(1)))
    return codes
