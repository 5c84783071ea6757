"""gradient-accumulation: with several backward passes per optimizer step, the loss is divided by their number."""

from __future__ import annotations

import statistics

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, RuntimeCheck, Skip, fmt, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="gradient-accumulation",
    code="DP113",
    summary="With several backward passes per optimizer step, the loss is divided by their number.",
)

#: The tensor reaching backward() equals the criterion's output up to float rounding and small extra terms
#: (a weight-decay or auxiliary term of a few percent).
SAME_TOL = 0.1


PAGE = Sections(
    why=f"""
        Accumulating k micro-batches without dividing the loss sums their gradients: the update is k times
        the one for the mean loss, as if the LR were k times larger (and the clip threshold k times smaller).
        On sampled steps the probe records how many `backward()` calls each call site made before the
        optimizer step (an accumulation loop calls it k times from one line; a GAN's or a multi-loss script's
        separate losses come from separate lines), and for each backward pass the ratio of the tensor reaching
        `backward()` to the sum of the criterion outputs computed since the previous one (unscaled under a
        GradScaler). It fails when k ≥ 2 backward passes come from one line and that ratio is 1 (within
        {number(SAME_TOL)}): the loss is the criterion's output, undivided. A ratio of about 1/k (or otherwise below
        1) passes: the loss is divided.

        What to do: divide the loss by the number of accumulation steps before `backward()`
        (`(loss / accum_steps).backward()`), or average the losses and call `backward()` once.
    """,
    known_problems="""
        Skips with one backward pass per step, when the backward passes come from different lines (separate
        losses summed on purpose), under a closure optimizer (LBFGS evaluates the loss inside `step()`), and
        when the tensor reaching `backward()` cannot be related to a criterion call (a custom loss, or more
        terms than the criterion). A loop over tasks that sums their gradients on purpose looks like
        accumulation and fails.
    """,
    bad="""
        for i, (x, y) in enumerate(loader):
            loss = loss_fn(model(x), y)
            loss.backward()                    # 4 micro-batches summed
            if (i + 1) % 4 == 0:
                optimizer.step()
                optimizer.zero_grad()
    """,
    good="""
        for i, (x, y) in enumerate(loader):
            loss = loss_fn(model(x), y) / 4
            loss.backward()
            if (i + 1) % 4 == 0:
                optimizer.step()
                optimizer.zero_grad()
    """,
)


def evaluate(run: ProbeRun):
    steps = [s for s in run.sampled_steps() if (s.backwards_per_site or 0) >= 2]
    if not steps:
        raise Skip("one backward pass per optimizer step (per call site): no accumulation to judge")
    k = int(statistics.median(s.backwards_per_site for s in steps))
    ratios = [r for s in steps for r in s.backward_ratio if r is not None]
    growth = [s.grad_after_backward for s in steps if len([g for g in s.grad_after_backward if g]) >= 2]
    evidence = {"micro_steps_per_update": k, "backward_to_criterion_ratio": ratios[:12],
                "grad_norm_after_each_backward": growth[:3], "steps": [s.step for s in steps]}
    if not ratios:
        raise Skip(f"{k} backward passes per step, but the loss reaching backward() could not be related to a "
                   "criterion call (custom loss)", evidence)
    r = statistics.median(ratios)
    evidence["median_ratio"] = r
    if abs(r - 1) <= SAME_TOL:
        li = run.loss_info
        msg = (f"{k} backward passes per optimizer step and the loss reaching backward() is the criterion's output "
               f"undivided (ratio {r:.2f}; divided it would be {1 / k:.2f}): the micro-batch gradients add up to "
               f"{k}x the mean, as if the LR were {k}x larger")
        return result(CHECK, FAIL, msg, evidence,
                      f"Divide the loss by the number of accumulation steps before backward(): (loss / {k}).backward().",
                      CHECK.finding(li.get("path"), li.get("line"), msg, evidence=evidence))
    if r < 1 - SAME_TOL:
        return result(CHECK, PASS, f"{k} backward passes per step, loss scaled by {fmt(r)} before backward() "
                                   f"(1/{k} = {1 / k:.3g})", evidence)
    raise Skip(f"{k} backward passes per step, but the loss reaching backward() is {fmt(r)}x the criterion outputs "
               "(more terms than the criterion): cannot tell whether it is divided", evidence)
