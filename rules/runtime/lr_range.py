"""lr-range (recipe): the LR range test — which learning rates make the loss fall, and a suggested LR."""

from __future__ import annotations

import math

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, fmt, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="lr-range",
    code="DP121",
    summary="Recipe: LR range test — the loss against a geometric LR sweep, with a suggested LR.",
    needs_steps=False,
    recipe=True,
)

#: Exponential smoothing of the swept loss (per-batch noise would otherwise pick a lucky batch).
SMOOTHING = 0.7
#: The sweep has diverged once the smoothed loss has lost half of what it gained (back half-way to its start).
DIVERGED = 0.5
#: The loss "fell" when its smoothed minimum is at least 5% below its start.
FELL = 0.05
#: Most healthy scripts sit 10-40x below the sweep's lowest-loss LR; within 3x of it they are at the edge.
NEAR_MIN = 3.0
#: A script LR this far below the suggestion barely trains.
TOO_LOW = 100.0


PAGE = Sections(
    why=f"""
        Leslie Smith's LR range test: sweep the LR geometrically over a short run and watch where the loss falls
        fastest, bottoms out and diverges. `--recipe lr-range` runs the script once more for `--recipe-steps`
        steps (default 60) with the LR of every parameter group set before each optimizer step to a geometric
        sweep from 1e-7 to 10 (groups keep their ratios) — the script's own schedule is overridden, and the
        report says so — and stops once the loss exceeds 4x its best and its first value. The check smooths
        the loss (exponential average, {number(SMOOTHING)}) and suggests the LR of the lowest smoothed loss divided by
        10 (the classic rule), with the LR of the steepest fall. It fails when the script's own LR (the largest
        the normal run used) is at or past where the sweep's loss had climbed back {number(DIVERGED * 100)}% of the way to
        its start; it warns when the script's LR is within {number(NEAR_MIN)}x of the lowest-loss LR (at the edge), more
        than {number(TOO_LOW)}x below the suggestion, or when the loss fell nowhere in the sweep.

        Cost: one extra run of the script for `--recipe-steps` steps (fewer if the sweep diverges), every step
        sampled.

        What to do: start from the suggested LR (with warm-up for large models), and re-probe.
    """,
    known_problems="""
        The sweep reaches high LRs with weights already trained at lower ones, so it overestimates the LR a
        fresh run tolerates; optimizers with their own LR semantics (Adadelta's lr 1.0) can read as "at the
        edge". Skips when the script updates weights by hand (no LR to set) or ends before the sweep got
        anywhere (its own data or epochs ran out). Schedulers that also move momentum (OneCycleLR) still do.
    """,
    bad="""
        optimizer = torch.optim.Adam(model.parameters(), lr=1.0)    # past where the sweep diverges
    """,
    good="""
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)   # near the suggested LR
    """,
)


def evaluate(run: ProbeRun):
    rr = run.recipe_runs.get("lr-range")
    if rr is None:
        raise Skip("the recipe run was not made: the normal run observed no optimizer step")
    if rr.manual_updates or run.manual_updates:
        raise Skip("the script updates weights by hand (no torch.optim optimizer): there is no LR for the sweep to set")
    pts = [(s.lr[0], s.loss) for s in rr.steps if s.lr and s.lr[0] and s.loss is not None and math.isfinite(s.loss)]
    if len(pts) < 5:
        why = f" ({rr.error.type}: {rr.error.message})" if rr.error else ""
        raise Skip(f"the LR range run gave only {len(pts)} finite loss(es){why}")
    smooth, avg = [], 0.0
    for i, (_, loss) in enumerate(pts):
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        smooth.append(avg / (1 - SMOOTHING ** (i + 1)))
    m = min(range(len(smooth)), key=smooth.__getitem__)
    lr_min_loss = pts[m][0]
    slopes = [(smooth[i + 1] - smooth[i]) / (math.log(pts[i + 1][0]) - math.log(pts[i][0]))
              for i in range(max(0, m)) if pts[i + 1][0] > pts[i][0]]
    steep = pts[min(range(len(slopes)), key=slopes.__getitem__)][0] if slopes else None
    back = smooth[m] + DIVERGED * (smooth[0] - smooth[m])
    diverge = next((pts[i][0] for i in range(m, len(pts)) if smooth[i] > back), None)
    if diverge is None and rr.lr_range.get("stopped_at_step") is not None:
        diverge = pts[-1][0]
    suggested = lr_min_loss / 10
    # the script's own LR: the largest the normal run used (a warm-up starts low), else the LR the sweep replaced
    script_lr = max((s.lr[0] for s in run.steps if s.lr and s.lr[0] is not None), default=None)
    if script_lr is None:
        script_lr = (rr.lr_range.get("script_lr") or [None])[0]
    evidence = {"lr": [p[0] for p in pts], "loss": [p[1] for p in pts], "smoothed": smooth, "lr_at_min_loss": lr_min_loss,
                "steepest_lr": steep, "diverged_at_lr": diverge, "suggested_lr": suggested, "script_lr": script_lr,
                "sweep": [rr.lr_range.get("lr_min"), rr.lr_range.get("lr_max")], "schedule_overridden": True,
                "cost": f"one extra run of {rr.steps_observed} steps, {rr.wall_seconds:.1f} s"}
    note = "the script's own LR schedule was overridden by the sweep"
    truncated = rr.lr_range.get("stopped_at_step") is None and rr.steps_observed < rr.steps_requested
    if truncated:
        evidence["truncated"] = f"the script ended after {rr.steps_observed} of {rr.steps_requested} steps"
        note += f"; the script ended after {rr.steps_observed} of {rr.steps_requested} steps, so the sweep stopped at {fmt(pts[-1][0])}"
    if smooth[m] > (1 - FELL) * smooth[0] and truncated:
        raise Skip(f"the script ended after {rr.steps_observed} of {rr.steps_requested} steps (its own data or epochs ran "
                   f"out), so the sweep only reached {fmt(pts[-1][0])} and the loss had not started to fall: give the "
                   "script more data or epochs, or fewer --recipe-steps", evidence)
    if smooth[m] > (1 - FELL) * smooth[0]:
        return result(CHECK, WARN, f"the loss fell nowhere in the sweep {fmt(pts[0][0])} -> {fmt(pts[-1][0])} ({note}): "
                      "the model does not learn at any LR", evidence,
                      "Check overfit-batch and gradient-flow: something other than the LR stops learning.")
    head = (f"suggested LR {fmt(suggested)} (loss lowest at {fmt(lr_min_loss)}"
            + (f", steepest fall at {fmt(steep)}" if steep else "") + (f", diverging from {fmt(diverge)}" if diverge else "")
            + f"); the script's LR {fmt(script_lr)}; {note}")
    if script_lr and diverge and script_lr >= diverge:
        return result(CHECK, FAIL, f"{head} — the script's LR is where the sweep diverged: too high", evidence,
                      f"Lower the LR towards {fmt(suggested)}.")
    if script_lr and script_lr * NEAR_MIN >= lr_min_loss:
        where = "past the bottom of the sweep" if script_lr >= lr_min_loss else f"within {NEAR_MIN:g}x of the bottom of the sweep"
        return result(CHECK, WARN, f"{head} — the script's LR is {where}: at the edge of stability", evidence,
                      f"If training is unstable, lower the LR towards {fmt(suggested)}.")
    if script_lr and script_lr * TOO_LOW < suggested:
        return result(CHECK, WARN, f"{head} — the script's LR is more than {TOO_LOW:g}x below the suggestion", evidence,
                      f"Raise the LR towards {fmt(suggested)}.")
    return result(CHECK, PASS, head, evidence)
