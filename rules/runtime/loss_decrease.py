"""loss-decrease: over the probed steps the loss goes down, beyond its batch-to-batch noise."""

from __future__ import annotations

import math
import statistics

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, SKIP, WARN, RuntimeCheck, fmt, no_steps, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="loss-decrease",
    code="DP104",
    summary="The loss decreases over the probed steps (it neither stays flat within noise nor grows).",
)

#: Below 6 losses the first/last thirds are 2 points each: too few to separate trend from noise.
MIN_STEPS = 6
#: A healthy run moves the loss by several percent in 20 steps; under 1% is "not moving".
FLAT_REL = 0.01
#: A rise of 10% beyond noise over a few dozen steps is divergence, not fluctuation.
GROW_REL = 0.10
#: Two standard errors: a change smaller than this is indistinguishable from batch noise.
NOISE_Z = 2.0


PAGE = Sections(
    why=f"""
        Over the probed steps a healthy run's loss goes down by more than its batch-to-batch noise. The
        check compares the mean loss of the first third of the finite losses with the mean of the last
        third; the noise comes from successive differences (per-step σ ≈ std(Δloss)/√2), and a change counts
        only when it exceeds {number(NOISE_Z)} standard errors of the two means. It warns "flat" when the relative
        change is under {number(FLAT_REL * 100)}% or within the noise: the LR is far too small, updates do not reach the
        weights (`zero_grad` after `backward`, a detached graph, a wrong optimizer parameter list), or the
        targets carry no signal (shuffled labels, inputs and targets misaligned). It fails "growing" when
        the loss rises by more than {number(GROW_REL * 100)}% beyond the noise: LR too high, a sign error, gradient
        ascent.

        What to do: flat — check that labels match inputs and that `optimizer.step()` follows `backward()`
        with the gradients intact, then raise the LR; growing — lower the LR, clip gradients, check the sign.
    """,
    known_problems=f"""
        Needs at least {MIN_STEPS} finite losses. Only the first and last thirds are compared, so a loss that
        shoots up and comes back down within the probe (an LR too high that oscillates) can pass. With a
        long LR warm-up, or a large model on a few steps, a healthy run can look flat: probe more steps
        (`--steps`) before acting on a warning.
    """,
    bad="""
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-7)   # the loss does not move
    """,
    good="""
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    """,
)


def evaluate(run: ProbeRun):
    skip = no_steps(CHECK, run)
    if skip:
        return skip
    losses = [s.loss for s in run.healthy_steps() if s.loss is not None and math.isfinite(s.loss)]
    if len(losses) < MIN_STEPS:
        return result(CHECK, SKIP, f"only {len(losses)} finite loss value(s); need {MIN_STEPS} to judge a trend",
                      {"losses": len(losses)})
    k = max(2, len(losses) // 3)
    first, last = statistics.fmean(losses[:k]), statistics.fmean(losses[-k:])
    diffs = [b - a for a, b in zip(losses, losses[1:])]
    sigma = statistics.pstdev(diffs) / math.sqrt(2) if len(diffs) > 1 else 0.0
    noise = NOISE_Z * sigma * math.sqrt(2 / k)  # standard error of a difference of two k-means
    change = last - first
    rel = change / abs(first) if first else 0.0
    evidence = {"first_mean": first, "last_mean": last, "relative_change": rel, "noise": noise, "window": k,
                "losses": len(losses)}
    head = f"loss {fmt(first)} -> {fmt(last)} ({rel:+.1%}) over {len(losses)} steps"
    if change > 0 and rel > GROW_REL and change > noise:
        return result(CHECK, FAIL, f"{head}: the loss grows", evidence,
                      "Lower the LR (try 10x smaller), check the sign of the loss, and clip gradients.")
    if abs(rel) < FLAT_REL or abs(change) <= noise:
        return result(CHECK, WARN, f"{head}: not moving beyond noise ({fmt(noise)})", evidence,
                      "Check that labels match inputs, that optimizer.step() follows backward() with grads intact, "
                      "and try a larger LR; with a long warm-up, probe more steps.")
    if change > 0:
        return result(CHECK, WARN, f"{head}: the loss rises slightly", evidence, "Watch the LR; probe more steps.")
    return result(CHECK, PASS, head, evidence)
