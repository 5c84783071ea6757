"""scheduler-order: the LR scheduler steps after the optimizer, so the schedule's first value is used."""

from __future__ import annotations

from doctor.core.page import Sections
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, fmt, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="scheduler-order",
    code="DP112",
    summary="The LR scheduler steps after the optimizer (the schedule's first value is not skipped).",
)

#: More scheduler steps than this before the first optimizer step look like deliberate fast-forwarding.
FAST_FORWARD = 1


PAGE = Sections(
    why="""
        Since PyTorch 1.1 the scheduler must step after the optimizer. Stepped before it, the first value of
        the schedule is skipped — the first optimizer step already runs with the second LR — and every later
        step is one schedule position ahead (a warm-up shortened, a decay early). The probe sees every
        `LRScheduler.step()` the script makes (not the one the constructor makes, nor the inner schedulers of a
        `SequentialLR`), with the number of steps its optimizer had taken at that moment and the learning rates
        just before and after it. It fails when a scheduler stepped once before its optimizer's first step
        (the order in the loop is `scheduler.step(); optimizer.step()`, or a per-epoch scheduler stepped at the
        top of the epoch), naming the LR the first step ran with and the one it should have; it warns when the
        scheduler stepped several times first (fast-forwarding a resumed schedule looks like that).

        What to do: call `optimizer.step()` first and `scheduler.step()` after it in every iteration
        (per-epoch schedulers: at the end of the epoch); to resume, load the scheduler's `state_dict`.
    """,
    known_problems="""
        With an active GradScaler the first optimizer steps are often skipped on purpose (inf gradients while
        the scale calibrates): a scheduler stepping then is PyTorch's known false alarm, so the check skips.
        A per-epoch scheduler in an epoch longer than the probe is never seen stepping (skip).
        `ReduceLROnPlateau` (stepped with a metric) and schedulers overriding `step()` without calling the
        base class are not seen.
    """,
    bad="""
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            scheduler.step()
            optimizer.step()
    """,
    good="""
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            scheduler.step()
    """,
)


def _lrs(values: list) -> str:
    return ", ".join(fmt(v) for v in values if v is not None) or "?"


def evaluate(run: ProbeRun):
    events = [e for e in run.scheduler_steps if e.get("scheduler") != "ReduceLROnPlateau"]
    if not events:
        raise Skip("no LR scheduler stepped during the probed steps")
    by_sched: dict[tuple, list[dict]] = {}
    for e in events:
        by_sched.setdefault((e.get("scheduler"), e.get("path"), e.get("line")), []).append(e)
    early = {k: [e for e in v if e.get("optimizer_steps") == 0] for k, v in by_sched.items()}
    early = {k: v for k, v in early.items() if v}
    evidence = {"schedulers": [{"scheduler": k[0], "path": k[1], "line": k[2], "steps_seen": len(v),
                                "optimizer_steps_at_first": v[0].get("optimizer_steps")} for k, v in by_sched.items()]}
    if not early:
        names = ", ".join(sorted({k[0] for k in by_sched}))
        return result(CHECK, PASS, f"{names} stepped after the optimizer", evidence)
    (sched, path, line), evs = next(iter(early.items()))
    first = evs[0]
    evidence.update(lr_before=first.get("lr_before"), lr_after=first.get("lr_after"), base_lrs=first.get("base_lrs"),
                    steps_before_first_optimizer_step=len(evs))
    if first.get("scaler"):
        raise Skip(f"{sched} stepped before the first optimizer step, but a GradScaler is in use: it skips the first "
                   "steps while its scale calibrates, so this ordering cannot be judged", evidence)
    if len(evs) > FAST_FORWARD:
        return result(CHECK, WARN, f"{sched}.step() ran {len(evs)} times before the first optimizer.step(): fast-forwarding "
                      f"a resumed schedule? (the LR is then already at position {len(evs)})", evidence,
                      "To resume, load the scheduler's state_dict instead of stepping it; otherwise call optimizer.step() "
                      "before scheduler.step().")
    msg = (f"{sched}.step() is called before optimizer.step(): the first optimizer step ran with lr "
           f"{_lrs(first.get('lr_after') or [])} instead of the schedule's first value {_lrs(first.get('lr_before') or [])} "
           "(the first LR of the schedule is skipped, every later one comes a step early)")
    return result(CHECK, FAIL, msg, evidence,
                  "Call optimizer.step() first and scheduler.step() after it (per-epoch schedulers: at the end of the epoch).",
                  CHECK.finding(path, line, msg, evidence=evidence))
