"""Distributed mode, in the parent: each rank's events become a run of its own, the runs one merged run, and the
checks one verdict per check.

- ``merge_ranks``: a ``ProbeRun`` per rank (its own status: stopped, crashed, timed out, or stopped because
  another rank failed), the rank that failed first (its own exception before a kill without a report before an
  error that is only the consequence — a collective with a dead peer, torchrun's SIGTERM —, then the earliest
  by the parent's clock), and the merged run: rank 0's steps and series (the report's charts), the job's status
  and error, every rank under ``ranks``, the job under ``distributed``.
- ``evaluate_ranks``: every single-process check on every rank, merged into one result per check that names
  the rank when they disagree (worst status wins; the failed rank leads), and the cross-rank checks
  (``RuntimeCheck(distributed=True)``) on the merged run.

Pure functions of the events: tested on synthetic ranks without torch.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

from doctor.probe.checks import FAIL, PASS, SKIP, WARN, CheckResult, RuntimeCheck, evaluate_one, load_checks
from doctor.probe.options import ProbeOptions
from doctor.probe.process import signal_name
from doctor.probe.trace import COMPLETED, CRASHED, STOPPED, TIMEOUT, ProbeRun, ScriptError

#: Errors a rank gets because *another* rank went away: a collective with a dead peer.
PEER_GONE = re.compile(
    r"Connection closed by peer|Connection reset by peer|Broken pipe|remote worker|DistBackendError|NCCL|"
    r"ProcessGroup|gloo|TCPStore|Socket Timeout", re.I)
_SEVERITY = {FAIL: 3, WARN: 2, PASS: 1, SKIP: 0}
#: A backend's source location in front of its message (gloo's ``[.../pair.cc:553] Connection closed by peer``).
_BRACKETED = re.compile(r"^\[[^\]]*\]\s*")
#: Characters of a collateral rank's own error kept in its "stopped after rank N failed (...)" message.
DETAIL_CHARS = 120
_THREAD = re.compile(r"^(Current thread|Thread) 0x[0-9a-fA-F]+")
_FRAME = re.compile(r'^\s+File "(.+)", line (\d+) in (.+)$')


@dataclass
class RankOutcome:
    """What the parent has of one rank when the job is over."""

    events: list[dict[str, Any]]
    info: dict[str, Any]
    #: Seconds from launch until the rank reported its exit or hung up (or the job ended).
    ended_at: float
    #: The rank process's exit code, when torchrun reported it (a negative one is a signal).
    exit_code: Optional[int] = None
    #: Where the rank was when asked for its stacks (a timeout): ``{"where": [path, line], "stack": [...]}``.
    stacks: Optional[dict[str, Any]] = None


def parse_stacks(text: str, script: str) -> dict[str, Any]:
    """A ``faulthandler`` dump (most recent call first): the thread running the script and its deepest line in it."""
    threads: list[list[tuple[str, int, str]]] = []
    for line in text.splitlines():
        if _THREAD.match(line):
            threads.append([])
            continue
        m = _FRAME.match(line)
        if m and threads:
            threads[-1].append((m.group(1), int(m.group(2)), m.group(3).strip()))
    real = os.path.realpath(script)
    main = next((t for t in threads if any(os.path.realpath(p) == real for p, _, _ in t)), threads[0] if threads else [])
    where = next(([p, ln] for p, ln, _ in main if os.path.realpath(p) == real), None)
    calls = list(reversed(main))  # as a traceback reads: the script's first frame first, the innermost last
    first = next((i for i, (p, _, _) in enumerate(calls) if os.path.realpath(p) == real), 0)
    stack = ["Stack (most recent call last):"] + [f'  File "{p}", line {ln}, in {fn}' for p, ln, fn in calls[first:]][-11:]
    # the innermost frame: in PyTorch (a collective, a device sync) the rank waits; in the script it is stuck itself
    in_torch = bool(main) and f"{os.sep}torch{os.sep}" in main[0][0]
    return {"where": where, "stack": stack, "in_torch": in_torch}


def _rank_status(run: ProbeRun, outcome: RankOutcome, timed_out: bool, timeout: float, stopped_by_us: bool) -> None:
    events = outcome.events
    exit_ev = next((ev for ev in reversed(events) if ev.get("ev") == "exit"), None)
    kind = exit_ev.get("kind") if exit_ev else None
    reached = any(ev.get("ev") == "done" for ev in events)
    if exit_ev is not None and exit_ev.get("code") is not None:
        run.exit_code = int(exit_ev["code"])
    if outcome.exit_code is not None:
        run.exit_code = outcome.exit_code
    where = (outcome.stacks or {}).get("where")
    if where:
        run.rank_info["where"] = where
        run.rank_info["stack"] = (outcome.stacks or {}).get("stack") or []
        run.rank_info["waiting_in_torch"] = bool((outcome.stacks or {}).get("in_torch"))
    if reached and kind in (None, "stopped", "completed", "terminated"):
        run.status = STOPPED
        run.error = None
    elif timed_out and kind in (None, "terminated"):
        run.status = TIMEOUT
        prev = run.error
        path, line = (where[0], where[1]) if where else ((prev.path, prev.line) if prev else (None, None))
        stack = run.rank_info.get("stack") or (prev.traceback if prev else [])
        run.error = ScriptError(type="Timeout", message=f"stopped at the {timeout:g} s timeout after "
                                f"{run.steps_observed} optimizer step(s)", path=path, line=line, traceback=list(stack))
    elif kind == "completed":
        run.status = COMPLETED
    elif stopped_by_us and kind in (None, "terminated"):
        # another rank had its N steps and this one made no progress since (or still was on its way): the probe
        # stopped it; what it observed is judged as it is
        run.status = STOPPED
        run.error = None
        run.rank_info["stopped_waiting"] = True
    elif kind is not None:
        run.status = CRASHED  # an exception, a non-zero exit, or SIGTERM from torchrun (the error says which)
    else:
        run.status = CRASHED
        code = outcome.exit_code
        if code is not None and code < 0:
            name = signal_name(-code)
            why = " (the kernel's OOM killer sends SIGKILL when host memory runs out)" if name == "SIGKILL" else ""
            run.error = ScriptError(type=name, message=f"the rank was killed by {name}{why}")
        elif code is not None:
            run.error = ScriptError(type="ProcessExit", message=f"the rank exited with status {code} without a report")
        else:
            run.error = ScriptError(type="ProcessExit", message="the rank's process ended without a report (killed by "
                                    "a signal: SIGKILL from the kernel's OOM killer, a segfault...)")


def _tier(run: ProbeRun) -> int:
    """How much a rank's failure says about the cause: 0 its own exception, 1 killed without a report (the OOM
    killer, a segfault), 2 only a consequence (a collective with a dead peer, torchrun's SIGTERM)."""
    err = run.error
    if err is None or err.type == "SIGTERM" or PEER_GONE.search(f"{err.type}: {err.message}"):
        return 2
    if err.type.startswith("SIG") or err.type == "ProcessExit":
        return 1
    return 0


def merge_ranks(
    outcomes: list[RankOutcome], *, script: str, args: list[str], options: ProbeOptions, expected: int,
    timed_out: bool, stopped_by_us: bool = False, stopped_after_failure: bool = False, wall: float = 0.0,
    launcher_code: Optional[int] = None, output_tail: Optional[list[str]] = None, launcher: Optional[list[str]] = None,
) -> ProbeRun:
    """The merged run of a torchrun job (see the module's docstring)."""
    runs: dict[int, ProbeRun] = {}
    ends: dict[int, float] = {}
    for o in sorted(outcomes, key=lambda o: int(o.info.get("rank") or 0)):
        rank = int(o.info["rank"])
        run = ProbeRun.from_events(o.events, script=script, args=args, steps_requested=options.steps)
        run.options = options.to_dict()
        run.wall_seconds = round(o.ended_at, 3)
        run.rank_info = {**run.rank_info, **{k: v for k, v in o.info.items() if k != "ev"}}
        _rank_status(run, o, timed_out, options.timeout, stopped_by_us)
        runs[rank] = run
        ends[rank] = o.ended_at

    # the rank that failed first: the most telling failure, then the earliest (the parent's clock)
    crashed = sorted((r for r, run in runs.items() if run.status == CRASHED), key=lambda r: (_tier(runs[r]), ends[r]))
    failed_rank = crashed[0] if crashed else None
    if failed_rank is not None:
        for r in crashed:
            run = runs[r]
            if _tier(run) > _tier(runs[failed_rank]):
                err = run.error
                msg = _BRACKETED.sub("", err.message).split(". ")[0] if err else ""  # its first sentence
                detail = f" ({err.type}: {msg[:DETAIL_CHARS]}{'...' if len(msg) > DETAIL_CHARS else ''})" if err else ""
                run.rank_info["stopped_by"] = failed_rank
                run.error = ScriptError(type=err.type if err else "Stopped", message=f"stopped after rank {failed_rank} "
                                        f"failed{detail}", path=err.path if err else None, line=err.line if err else None,
                                        traceback=list(err.traceback) if err else [])

    local = {run.rank_info.get("local_rank") for run in runs.values()}
    missing = [i for i in range(expected) if i not in local]
    job: dict[str, Any] = {
        "launcher": "torch.distributed.run",
        "command": launcher or [],
        "nproc_per_node": expected,
        "nnodes": options.nnodes or "1",
        "node_rank": options.node_rank if options.node_rank is not None else 0,
        "world_size": next((run.rank_info.get("world_size") for run in runs.values() if run.rank_info.get("world_size")), None),
        "ranks_here": sorted(runs),
        "missing_local_ranks": missing,
        "failed_rank": failed_rank,
        "backend": next((run.dist.get("backend") for run in runs.values() if run.dist.get("backend")), None),
        "ddp": any(run.dist.get("ddp") for run in runs.values()),
        "stopped_by_probe": bool(timed_out or stopped_after_failure or stopped_by_us),
    }

    if not runs:
        main = ProbeRun(script=script, args=list(args), steps_requested=options.steps)
        main.options = options.to_dict()
        last = next((ln.strip() for ln in reversed(output_tail or []) if ln.strip() and not ln.startswith("*")), "")
        if timed_out:
            main.status = TIMEOUT
            main.error = ScriptError(type="Timeout", message=f"no rank started the script within the {options.timeout:g} s timeout")
        else:
            main.status = CRASHED
            main.error = ScriptError(type="LauncherError", message=f"torchrun exited with status {launcher_code} before "
                                     f"any rank started the script" + (f": {last}" if last else ""))
    else:
        base = runs[min(runs)]
        main = copy.copy(base)
        main.rank_info = dict(base.rank_info)
        if timed_out:
            main.status = TIMEOUT
            main.error = _timeout_error(runs, options.timeout)
        elif crashed:
            main.status = CRASHED
            main.error = runs[failed_rank].error if failed_rank is not None else None
        elif all(run.status == COMPLETED for run in runs.values()):
            main.status = COMPLETED
        else:
            main.status = STOPPED
        if timed_out:
            job["slowest_rank"] = _slowest(runs)
    main.ranks = runs
    main.distributed = job
    main.wall_seconds = round(wall, 3)
    main.exit_code = launcher_code
    main.output_tail = list(output_tail or [])
    return main


def _slowest(runs: dict[int, ProbeRun]) -> int:
    """The rank that held a timed-out job up: the fewest steps, and among those one stuck in its own code rather
    than waiting inside PyTorch (in a collective, for the others)."""
    return min(runs, key=lambda r: (runs[r].steps_observed, bool(runs[r].rank_info.get("waiting_in_torch")), r))


def _at(run: ProbeRun) -> str:
    err = run.error
    return f" at {_shown(err.path)}:{err.line}" if err is not None and err.path and err.line else ""


def _shown(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _timeout_error(runs: dict[int, ProbeRun], timeout: float) -> ScriptError:
    """Which rank held the job up and where each rank was."""
    slowest = _slowest(runs)
    run = runs[slowest]
    others = []
    for r, other in sorted(runs.items()):
        if r == slowest:
            continue
        how = " waiting inside PyTorch (a collective waits for every rank)" if other.rank_info.get("waiting_in_torch") else ""
        others.append(f"rank {r} after {other.steps_observed}{_at(other)}{how}")
    stuck = "" if run.rank_info.get("waiting_in_torch") or not run.rank_info.get("where") else " in its own code"
    who = f"rank {slowest} stopped making progress after {run.steps_observed} optimizer step(s){_at(run)}{stuck}"
    if others:
        who += "; " + "; ".join(others)
    err = run.error
    return ScriptError(type="Timeout", message=f"the job was stopped after the {timeout:g} s timeout: {who}",
                       path=err.path if err else None, line=err.line if err else None,
                       traceback=list(err.traceback) if err else [])


# ------------------------------------------------------------------------------------------------- checks
def focus_order(run: ProbeRun) -> list[int]:
    """Ranks in the order the report names them: the rank that failed first (or held up a timeout), then by rank."""
    lead = run.distributed.get("failed_rank")
    if lead is None:
        lead = run.distributed.get("slowest_rank")
    rest = sorted(r for r in run.ranks if r != lead)
    return ([lead] if lead in run.ranks else []) + rest


def merge_results(check: RuntimeCheck, results: dict[int, CheckResult], order: list[int],
                  collateral: frozenset[int] = frozenset()) -> CheckResult:
    """One verdict from each rank's: the worst status, led by the first rank (in ``order``) that has it; the
    summary names the rank and, when ranks disagree, every rank's status. Findings of ranks that only stopped
    because another failed (``collateral``) are left out: they point at where those ranks happened to be."""
    ranks = [r for r in order if r in results]
    worst = max((results[r].status for r in ranks), key=lambda s: _SEVERITY[s])
    lead = next(r for r in ranks if results[r].status == worst)
    base = results[lead]
    statuses = {r: results[r].status for r in ranks}
    if len(ranks) == 1 or (len(set(statuses.values())) == 1 and worst in (PASS, SKIP)):
        summary = base.summary
    elif len(set(statuses.values())) == 1:
        if all(results[r].summary == base.summary for r in ranks):
            summary = f"all {len(ranks)} ranks: {base.summary}"
        else:
            others = ", ".join(str(r) for r in ranks if r != lead)
            summary = f"rank {lead}: {base.summary} (also {worst} on rank {others})"
    else:
        listed = [lead] + [r for r in ranks if r != lead]
        summary = f"rank {lead}: {base.summary} [" + ", ".join(f"rank {r} {statuses[r]}" for r in listed) + "]"
    evidence = dict(base.evidence)
    evidence["per_rank"] = {str(r): {"status": results[r].status, "summary": results[r].summary} for r in ranks}
    findings, seen = [], set()
    for r in ranks:
        if r in collateral and r != lead:
            continue
        for f in results[r].findings:
            key = (f.path, f.line, f.rule)
            if key not in seen:
                seen.add(key)
                findings.append(f)
    return CheckResult(name=check.name, code=check.code, status=worst, summary=summary, evidence=evidence,
                       advice=base.advice, findings=findings)


def evaluate_ranks(run: ProbeRun) -> tuple[list[CheckResult], dict[int, list[CheckResult]]]:
    """Every check of a distributed run: the single-process ones per rank and merged, the cross-rank ones once.
    Also each rank's own results, by rank."""
    wanted = set(run.recipe_requested)
    checks = [(c, fn) for c, fn in load_checks() if not c.recipe or c.name in wanted]
    per_rank: dict[int, list[CheckResult]] = {
        r: [evaluate_one(c, fn, rr) for c, fn in checks if not c.distributed] for r, rr in run.ranks.items()}
    order = focus_order(run)
    collateral = frozenset(r for r, rr in run.ranks.items() if rr.rank_info.get("stopped_by") is not None)
    merged: list[CheckResult] = []
    i = 0
    for check, fn in checks:
        if check.distributed:
            merged.append(evaluate_one(check, fn, run))
            continue
        if per_rank:
            merged.append(merge_results(check, {r: res[i] for r, res in per_rank.items()}, order, collateral))
        else:  # no rank started: judge the bare run (training-loop says why)
            merged.append(evaluate_one(check, fn, run))
        i += 1
    return merged, per_rank
