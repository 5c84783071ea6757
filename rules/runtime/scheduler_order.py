"""scheduler-order: the LR scheduler steps after the optimizer, so the schedule's first value is used.

Measures: every ``LRScheduler.step()`` the script makes (not the one the constructor makes, nor the inner
schedulers of a ``SequentialLR``), with the number of steps its optimizer had taken at that moment and the
learning rates just before and after it.

- fail: the scheduler stepped before its optimizer's first ``step()``, once: the order in the loop is
  ``scheduler.step(); optimizer.step()`` (or a per-epoch scheduler stepped at the top of the epoch). The first
  value of the schedule is skipped — the first optimizer step already runs with the second LR — and every
  later step is one schedule position ahead (warm-up shortened, decay early). The check names the LRs.
- warn: the scheduler stepped several times before the first optimizer step: fast-forwarding a resumed
  schedule (``for _ in range(start_epoch): scheduler.step()``) looks like this; if that is the intent, load
  the scheduler's ``state_dict`` instead.
- skip: with a GradScaler the first optimizer steps are often skipped on purpose (inf gradients while the
  scale calibrates): a scheduler stepping then is PyTorch's known false alarm, not a misordered loop.

Stays silent when no scheduler stepped during the probed steps (a per-epoch scheduler in a long epoch), and
on ``ReduceLROnPlateau`` (stepped with a metric, it has no schedule position to skip).

What to do: call ``optimizer.step()`` first and ``scheduler.step()`` after it in every iteration (per-epoch
schedulers: at the end of the epoch).
"""

from __future__ import annotations

from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, fmt, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="scheduler-order",
    code="DP112",
    summary="The LR scheduler steps after the optimizer (the schedule's first value is not skipped).",
)

#: More scheduler steps than this before the first optimizer step look like deliberate fast-forwarding.
FAST_FORWARD = 1


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
