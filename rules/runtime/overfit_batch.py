"""overfit-batch (recipe): the model can drive the loss on one repeated batch to a small fraction of its start."""

from __future__ import annotations

import math
import statistics

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, fmt, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="overfit-batch",
    code="DP118",
    summary="Recipe: on one repeated batch the loss falls to a small fraction of its start.",
    needs_steps=False,
    recipe=True,
)

#: Karpathy asks for "the lowest achievable loss"; within a short probe, 20% of the start above the floor.
OVERFIT_FRACTION = 0.2
#: Above half of the start the model has barely fitted the batch at all.
STUCK_FRACTION = 0.5
#: The last third of the steps gaining less than 5% of the start is a plateau.
PLATEAU = 0.05
#: A plateau is only called over at least this many steps (a script whose epoch ends sooner gets a warning).
MIN_FAIL_STEPS = 30


PAGE = Sections(
    why=f"""
        Karpathy's "overfit one batch": a model, loss and optimizer that work can drive the loss on one batch
        close to its floor; if they cannot, nothing else will work. `--recipe overfit-batch` runs the script
        once more for `--recipe-steps` optimizer steps (default 60) with its first batch repeated — every call
        of the top-level model and every criterion target of a later step replaced by the first step's — and
        otherwise unchanged (model, optimizer, LR schedule). It reads the first criterion term per step, above
        its floor (the target entropy for soft BCE targets, the smoothed-label entropy under label smoothing,
        else 0). It passes when that falls to at most {number(OVERFIT_FRACTION * 100)}% of its start; it fails when it
        stays above {number(STUCK_FRACTION * 100)}% and has stopped falling (the last third of the steps gains less than
        {number(PLATEAU * 100)}% of the start) over at least {MIN_FAIL_STEPS} steps: an output head that cannot reach the
        targets (a sigmoid in front of a regression target outside [0, 1]), a loss that cannot reach zero, a
        broken optimizer (LR 0, parameters not in it). In between it warns: still falling, but slowly.

        Cost: one extra run of the script for `--recipe-steps` steps, every step sampled.

        What to do: on a fail, check that the output head can reach the targets at all, the loss, the
        optimizer's parameter list and LR, and gradient-flow of the normal run.
    """,
    known_problems=f"""
        The batch is repeated by replacing the top-level model's positional arguments and the criterion
        targets: a model called with keyword tensors only cannot be repeated (skip). Large models at their
        own small LR or under a long warm-up need more steps than the default to fit (a warning that says
        "still falling": raise `--recipe-steps`). A script whose own data or epochs end before {MIN_FAIL_STEPS} steps
        gets a warning, not a fail.
    """,
    bad="""
        model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1), nn.Sigmoid())
        loss = F.mse_loss(model(x), y)           # y in [0, 5]: the sigmoid caps the output at 1
    """,
    good="""
        model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
        loss = F.mse_loss(model(x), y)
    """,
)


def _floor(term: dict) -> float:
    """The lowest value the criterion can reach on these targets (per element, or summed for reduction='sum')."""
    kind, per = term.get("kind"), 0.0
    if kind in ("bce", "bce_logits"):
        per = float(term.get("target_entropy") or 0.0)
    elif kind in ("cross_entropy", "nll") and term.get("label_smoothing"):
        eps, c = float(term["label_smoothing"]), int(term.get("classes") or 2)
        hi, lo = 1 - eps + eps / c, eps / c
        per = -(hi * math.log(hi) + (c - 1) * lo * math.log(lo)) if lo > 0 else 0.0
    if term.get("reduction") == "sum":
        per *= float(term.get("count") or 0)
    return per


def evaluate(run: ProbeRun):
    rr = run.recipe_runs.get("overfit-batch")
    if rr is None:
        raise Skip("the recipe run was not made: the normal run observed no optimizer step")
    if rr.steps_observed < 4:
        why = f" ({rr.error.type}: {rr.error.message})" if rr.error else ""
        raise Skip(f"the overfit run observed only {rr.steps_observed} step(s){why}")
    replaced = int((rr.summary or {}).get("overfit_replaced") or 0)
    if rr.summary and not replaced:
        raise Skip("the first batch could not be repeated (the model is not called with positional tensors?)")
    term = rr.loss_terms[0] if rr.loss_terms else {}
    kind = term.get("kind")
    values = [(s.criterion.get(kind) if kind else None) for s in rr.steps]
    if sum(v is not None for v in values) < len(values) // 2:
        values, term = [s.loss for s in rr.steps], {}
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if len(vals) < 4:
        raise Skip("fewer than four finite losses in the overfit run")
    floor = _floor(term) if term else 0.0
    start, end = vals[0] - floor, min(vals[-3:]) - floor
    third = max(2, len(vals) // 3)
    gain_last = (statistics.fmean(vals[-2 * third: -third]) - statistics.fmean(vals[-third:])) / start if start > 0 else 0.0
    evidence = {"steps": rr.steps_observed, "first": vals[0], "last": vals[-1], "best_of_last_3": min(vals[-3:]),
                "floor": floor, "fraction_left": end / start if start > 0 else None, "criterion": kind or "loss",
                "losses": vals, "calls_replaced": replaced, "cost": f"one extra run of {rr.steps_observed} steps, "
                f"{rr.wall_seconds:.1f} s"}
    if start <= 0:
        raise Skip(f"the first loss {fmt(vals[0])} is already at its floor {fmt(floor)}", evidence)
    frac = end / start
    head = f"on one repeated batch the loss went {fmt(vals[0])} -> {fmt(min(vals[-3:]))} in {rr.steps_observed} steps"
    floor_text = f" (floor {fmt(floor)})" if floor else ""
    if frac <= OVERFIT_FRACTION:
        return result(CHECK, PASS, f"{head}: {frac:.0%} of its start left{floor_text}", evidence)
    short = rr.steps_observed < MIN_FAIL_STEPS
    if short:
        evidence["note"] = (f"the script ended after {rr.steps_observed} of {rr.steps_requested} steps (its own data or "
                            "epochs ran out): too few to call a plateau")
    if frac > STUCK_FRACTION and gain_last < PLATEAU and not short:
        return result(CHECK, FAIL, f"{head} and stopped falling: {frac:.0%} of its start left{floor_text} — the model cannot "
                      "fit even one batch", evidence,
                      "Check that the output head can reach the targets (no sigmoid/tanh in front of a wider-ranged target), "
                      "the loss, the optimizer's parameters and LR, and gradient-flow.")
    why = (f"; the script ended after {rr.steps_observed} steps" if short else ", still falling slowly")
    return result(CHECK, WARN, f"{head}: {frac:.0%} of its start left{floor_text}{why}", evidence,
                  "Probe longer (--recipe-steps, and enough data or epochs for the script to run that long) before "
                  "acting; a long warm-up or a small LR fits one batch slowly.")
