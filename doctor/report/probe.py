"""Render a probe result: a ten-second terminal view, and the JSON contract (with per-step series for charts)."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

from doctor.probe.checks import fmt
from doctor.probe.payload import result_to_dict

SPARKS = "▁▂▃▄▅▆▇█"
BAR_WIDTH = 28
MAX_BARS = 16
COLOURS = {"pass": "32", "warn": "33", "fail": "31", "skip": "2"}


def render_json(result: Any) -> str:
    return json.dumps(result_to_dict(result), indent=2, allow_nan=False)


# ---------------------------------------------------------------------------------------------- text
TRACEBACK_LINES = 14


def traceback_lines(entries: list[str], limit: int = TRACEBACK_LINES) -> list[str]:
    """A traceback cut to about ``limit`` lines for the terminal: Python's ``^^^`` markers go first, then the
    frames between the script's first frame and the innermost ones (deep library stacks), so that the line of
    the script and the exception both stay."""
    lines = "\n".join(entries).splitlines()
    if len(lines) <= limit:
        return lines
    lines = [ln for ln in lines if ln.strip(" ^~")]
    if len(lines) <= limit:
        return lines

    def is_frame(ln: str) -> bool:
        return ln.lstrip().startswith('File "')

    first = next((i for i, ln in enumerate(lines[:2]) if is_frame(ln)), None)  # after "Traceback (most recent ...":
    head = lines[: first + 2] if first is not None else []
    tail = lines[len(lines) - (limit - len(head) - 1):]
    start = next((i for i, ln in enumerate(tail) if is_frame(ln)), 0)  # begin the tail at a frame, not mid-frame
    tail = tail[start:]
    left_out = len(lines) - len(head) - len(tail)
    return head + [f"  ... {left_out} line(s) left out ..."] + tail


def sparkline(values: list[Optional[float]]) -> str:
    """One character per value; non-finite values show as ``×``, missing ones as a space."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        elif not math.isfinite(v):
            out.append("×")
        else:
            out.append(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * (len(SPARKS) - 1) + 0.5))])
    return "".join(out)


def _bars(values: dict[str, float]) -> list[str]:
    """Log-scale bars: gradient norms span orders of magnitude, and the small ones are the interesting ones."""
    vals = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
    if not vals:
        return []
    pos = [v for v in vals.values() if v > 0]
    lo, hi = (math.log10(min(pos)), math.log10(max(pos))) if pos else (0.0, 0.0)
    span = hi - lo or 1.0
    width = min(36, max(len(k) for k in vals))
    names = list(vals)
    shown = names if len(names) <= MAX_BARS else names[: MAX_BARS // 2] + names[-MAX_BARS // 2 :]
    lines = []
    for i, name in enumerate(shown):
        if len(names) > MAX_BARS and i == MAX_BARS // 2:
            lines.append(f"    {'…':<{width}}  ({len(names) - MAX_BARS} more)")
        v = vals[name]
        n = 0 if v <= 0 else 1 + int((math.log10(v) - lo) / span * (BAR_WIDTH - 1))
        label = name if len(name) <= width else "…" + name[-(width - 1):]
        lines.append(f"    {label:<{width}}  {'█' * n:<{BAR_WIDTH}} {fmt(v)}")
    return lines


def _colour(text: str, status: str, colour: bool) -> str:
    return f"\033[{COLOURS[status]}m{text}\033[0m" if colour else text


def _rel(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _ranks_block(run: Any) -> list[str]:
    """One line per rank of a distributed run: how it ended, its pace, and where it was when it did not finish."""
    job = run.distributed
    backend = f", {job['backend']}" if job.get("backend") else ""
    world = f", world size {job['world_size']}" if job.get("world_size") else ""
    node = f" on node {job['node_rank']}" if str(job.get("nnodes") or "1") not in ("1", "1:1") else ""
    lines = [f"  ranks (torch.distributed.run{backend}{world}; {job.get('nproc_per_node')} per node{node}):"]
    for r, rr in sorted(run.ranks.items()):
        walls = sorted(s.wall_s for s in rr.steps[1:] if s.wall_s)
        pace = f"  {walls[len(walls) // 2] * 1000:.1f} ms/step" if walls else ""
        wall = sum(s.wall_s or 0.0 for s in rr.steps[1:])
        wait = f"  data wait {sum(s.data_wait_s for s in rr.steps[1:]) / wall:.0%}" if wall and any(s.batches for s in rr.steps) else ""
        line = f"    rank {r:<3} {rr.status:<9} {rr.steps_observed:>3} step(s){pace}{wait}"
        if rr.rank_info.get("stopped_waiting"):
            line += "  (stopped by the probe: the other ranks had their steps and it made no progress)"
        if rr.error is not None and rr.status != "stopped":
            where = f" ({_rel(rr.error.path)}:{rr.error.line})" if rr.error.path and rr.error.line else ""
            line += f"  {rr.error.type}: {rr.error.message[:160]}{where}"
        lines.append(line)
    if job.get("missing_local_ranks"):
        lines.append(f"    local rank(s) {', '.join(map(str, job['missing_local_ranks']))} never started the probe")
    return lines


def render_text(result: Any, colour: bool = False) -> str:
    """A report a person reads in ten seconds: outcome, check table, loss sparkline, grad bars, memory."""
    run = result.run
    script = os.path.relpath(run.script) if not os.path.relpath(run.script).startswith("..") else run.script
    dev = run.device.get("name") or run.device.get("type", "unknown")
    job = run.distributed
    ranks = f", {len(run.ranks)} rank(s) under torchrun" if job else ""
    lines = [f"doctor probe {script}: {run.status} after {run.steps_observed}/{run.steps_requested} step(s) "
             f"in {run.wall_seconds:.1f} s on {dev}{ranks}"]
    if run.error:
        where = f" ({_rel(run.error.path)}:{run.error.line})" if run.error.path and run.error.line else ""
        if where[2:-1] in run.error.message:
            where = ""  # the message says where already (a distributed timeout names every rank's line)
        who = f" (rank {job['failed_rank']})" if job and job.get("failed_rank") is not None else ""
        lines.append(f"  error{who}: {run.error.type}: {run.error.message}{where}")
    lines.append("")
    width = max((len(c.name) for c in result.checks), default=10)
    for c in result.checks:
        status = _colour(f"{c.status:<4}", c.status, colour)
        lines.append(f"  {c.code}  {c.name:<{width}}  {status}  {c.summary}")
    if job:
        lines += [""] + _ranks_block(run)
    losses = run.losses
    if any(v is not None for v in losses):
        finite = [v for v in losses if v is not None and math.isfinite(v)]
        ends = f"  {fmt(finite[0])} → {fmt(finite[-1])}" if finite else ""
        lines += ["", f"  loss  {sparkline(losses)}{ends}"]
    med = next((c.evidence.get("median_grad_norm") for c in result.checks if c.name == "gradient-flow"), None)
    if med:
        lines += ["", "  gradient norm per parameter (median of sampled steps, log scale)"] + _bars(med)
    mem = next((c for c in result.checks if c.name == "memory-headroom"), None)
    if mem is not None:
        lines += ["", f"  memory  {mem.summary}"]
    problems = [c for c in result.checks if c.status in ("warn", "fail") and c.advice]
    if problems:
        lines.append("")
        for c in problems:
            lines.append(f"  {c.name}: {c.advice}")
    for f in result.findings:
        lines.append(f"  {f.path}:{f.line}: {f.code} {f.message}")
    if run.warnings:
        lines += ["", f"  {len(run.warnings)} Python warning(s) during the run:"]
        for w in run.warnings[:5]:
            lines.append(f"    {w.get('category')}: {str(w.get('message')).splitlines()[0][:160]}")
    if run.recipe_runs:
        lines += ["", "  recipe runs (each a run of its own):"]
        for name, rr in run.recipe_runs.items():
            losses = rr.losses
            note = " — the script's LR schedule was overridden by the sweep" if name == "lr-range" else ""
            err = f", {rr.error.type}" if rr.error else ""
            lines.append(f"    {name:<14} {rr.status} after {rr.steps_observed} step(s) in {rr.wall_seconds:.1f} s{err}{note}")
            if any(v is not None for v in losses):
                lines.append(f"    {'':<14} loss  {sparkline(losses)}")
    notes = []
    if run.manual_updates:
        notes.append("weights are updated by hand after backward() (no torch.optim step): each backward() closes a step")
    if run.compiled:
        notes.append("a torch.compile'd model ran: statistics inside the compiled region (activations) are not collected")
    if notes:
        lines += [""] + [f"  note: {n}" for n in notes]
    if run.status in ("crashed", "timeout") and run.error and run.error.traceback:
        lead = (job.get("failed_rank") if job.get("failed_rank") is not None else job.get("slowest_rank")) if job else None
        whose = f" of rank {lead}" if lead is not None else ""
        lines += ["", f"  traceback{whose} (from the script's first frame):"] + [f"    {ln}" for ln in traceback_lines(run.error.traceback)]
    elif run.status in ("crashed", "timeout") and run.output_tail:
        lines += ["", "  last output of the script:"] + [f"    {ln}" for ln in run.output_tail[-8:]]
    verdict = "FAILED" if result.failed else "ok"
    lines += ["", f"  {verdict}: " + ", ".join(f"{sum(c.status == s for c in result.checks)} {s}" for s in ("pass", "warn", "fail", "skip"))]
    return "\n".join(lines)
