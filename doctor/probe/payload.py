"""A probe result as plain data: the JSON contract of ``doctor probe --format json`` (with per-step series
for charts). Every report (text, JSON, HTML, merged) reads this one shape."""

from __future__ import annotations

from typing import Any

from doctor.core.numbers import json_safe

JSON_VERSION = 1


def series(run: Any) -> dict[str, Any]:
    """Per-step series for charts: one entry per observed step (null where a step was not sampled)."""
    steps = run.steps
    names: list[str] = []
    for s in steps:
        for n in list(s.param_grad_norms) + list(s.param_update_ratio):
            if n not in names:
                names.append(n)
    groups = max((len(s.lr) for s in steps), default=0)
    out: dict[str, Any] = {
        "step": [s.step for s in steps],
        "sampled": [s.sampled for s in steps],
        "loss": [s.loss for s in steps],
        "lr": [[s.lr[g] if g < len(s.lr) else None for s in steps] for g in range(groups)],
        "step_seconds": [s.wall_s for s in steps],
        "data_wait_seconds": [s.data_wait_s for s in steps],
        "grad_norm": [s.grad_norm for s in steps],
        "param_grad_norm": {n: [s.param_grad_norms.get(n) for s in steps] for n in names},
        "update_ratio": [[s.update_ratio[g] if g < len(s.update_ratio) else None for s in steps] for g in range(groups)],
        "param_update_ratio": {n: [s.param_update_ratio.get(n) for s in steps] for n in names},
    }
    out["backwards"] = [s.backwards for s in steps]
    out["clip_total_norm"] = [s.clip.get("total_norm") if s.clip else None for s in steps]
    if any(s.memory for s in steps):
        keys = ("allocated", "reserved", "peak_allocated", "peak_reserved")
        out["memory_bytes"] = {k: [s.memory.get(k) for s in steps] for k in keys}
    return out


def recipe_run(run: Any) -> dict[str, Any]:
    """A recipe run of its own (overfit-batch, lr-range): how it ended and its loss (and LR) per step."""
    return {
        "status": run.status,
        "steps_observed": run.steps_observed,
        "wall_seconds": run.wall_seconds,
        "error": run.error.to_dict() if run.error else None,
        "options": run.options,
        "lr_range": run.lr_range,
        "series": {"step": [s.step for s in run.steps], "loss": [s.loss for s in run.steps],
                   "lr": [s.lr[0] if s.lr else None for s in run.steps]},
    }


def rank_entry(rank: int, run: Any, checks: list[Any]) -> dict[str, Any]:
    """One rank of a distributed run: who it is, how it ended, its own check verdicts, its per-step series."""
    info = run.rank_info
    return {
        "rank": rank,
        "local_rank": info.get("local_rank"),
        "node_rank": info.get("node_rank"),
        "pid": info.get("pid"),
        "status": run.status,
        "steps_observed": run.steps_observed,
        "wall_seconds": run.wall_seconds,
        "exit_code": run.exit_code,
        "error": run.error.to_dict() if run.error else None,
        "stopped_by_rank": info.get("stopped_by"),
        "where": info.get("where"),
        "stack": info.get("stack") or [],
        "device": run.device,
        "dist": run.dist,
        "samplers": run.samplers,
        "checks": [{"name": c.name, "code": c.code, "status": c.status, "summary": c.summary} for c in checks],
        "series": {"step": [s.step for s in run.steps], "loss": [s.loss for s in run.steps],
                   "step_seconds": [s.wall_s for s in run.steps], "data_wait_seconds": [s.data_wait_s for s in run.steps]},
    }


def result_to_dict(result: Any) -> dict[str, Any]:
    """The JSON contract of ``doctor probe --format json``."""
    run = result.run
    data = {
        "version": JSON_VERSION,
        "script": {
            "path": run.script,
            "args": run.args,
            "status": run.status,
            "error": run.error.to_dict() if run.error else None,
            "steps_observed": run.steps_observed,
            "steps_requested": run.steps_requested,
            "wall_seconds": run.wall_seconds,
            "exit_code": run.exit_code,
            "output_tail": run.output_tail,
        },
        "device": run.device or {"type": "unknown"},
        "exit_code": result.exit_code,
        "checks": [c.to_dict() for c in result.checks],
        "findings": [f.to_dict() for f in result.findings],
        "loss": run.loss_info,
        "warnings": run.warnings,
        "params": [p.__dict__ for p in run.params],
        "series": series(run),
        "options": run.options,
        "loss_terms": run.loss_terms,
        "scheduler_steps": run.scheduler_steps,
        "experiments": run.experiments,
        "recipes": {name: recipe_run(rr) for name, rr in run.recipe_runs.items()},
        "probe": {"startup_seconds": run.startup_seconds, "internal_errors": run.internal_errors,
                  "manual_updates": run.manual_updates, "compiled": run.compiled, "models": run.models,
                  "summary": run.summary},
        "samplers": run.samplers,
    }
    if run.distributed:
        # The top-level fields are rank 0's run (its series feed the charts) with the job's status and error.
        data["distributed"] = {**run.distributed,
                               "ranks": [rank_entry(r, rr, getattr(result, "rank_checks", {}).get(r, []))
                                         for r, rr in sorted(run.ranks.items())]}
    return json_safe(data)
