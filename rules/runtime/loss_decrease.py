"""loss-decrease: over the probed steps the loss goes down, beyond its batch-to-batch noise."""

from __future__ import annotations

import math
import statistics

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, fmt, result
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
        third; the noise comes from successive differences (per-step σ ≈ 1.48·median|Δloss|/√2, robust to a
        steep fall such as LBFGS's), and a change counts
        only when it exceeds {number(NOISE_Z)} standard errors of the two means. It warns "flat" when the relative
        change is under {number(FLAT_REL * 100)}% or within the noise: the LR is far too small, updates do not reach the
        weights (`zero_grad` after `backward`, a detached graph, a wrong optimizer parameter list), or the
        targets carry no signal (shuffled labels, inputs and targets misaligned). It fails "growing" when
        the loss rises by more than {number(GROW_REL * 100)}% beyond the noise: LR too high, a sign error, gradient
        ascent. It warns too when the loss falls from an early spike but ends no lower than at step 0: no
        progress at all (labels unrelated to the inputs leave the loss at the label prior).

        What to do: flat — check that labels match inputs and that `optimizer.step()` follows `backward()`
        with the gradients intact, then raise the LR; growing — lower the LR, clip gradients, check the sign.
    """,
    known_problems=f"""
        Needs at least {MIN_STEPS} finite losses. Only the first and last thirds are compared, so a loss that
        shoots up and comes back down within the probe passes here: learning-rate judges that trajectory.
        Shuffled labels are at most a warning: in a short probe a model that has not yet beaten the label
        prior and one that never will look the same. With a
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
    losses = [s.loss for s in run.healthy_steps() if s.loss is not None and math.isfinite(s.loss)]
    if len(losses) < MIN_STEPS:
        raise Skip(f"only {len(losses)} finite loss value(s); need {MIN_STEPS} to judge a trend", {"losses": len(losses)})
    k = max(2, len(losses) // 3)
    first, last = statistics.fmean(losses[:k]), statistics.fmean(losses[-k:])
    diffs = [b - a for a, b in zip(losses, losses[1:])]
    # robust: the median step-to-step change, not its standard deviation, so the steep fall of a run that
    # learns fast (LBFGS: 0.25 -> 1e-4 in a few steps) is not mistaken for noise
    sigma = 1.4826 * statistics.median(abs(d) for d in diffs) / math.sqrt(2) if len(diffs) > 1 else 0.0
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
    init = losses[0]
    evidence["loss_at_step_0"] = init
    if last >= init - noise and last > init * (1 - FLAT_REL):
        # falling from an early spike back to where it started is no progress (labels unrelated to inputs?)
        return result(CHECK, WARN, f"{head}: but no lower than at step 0 ({fmt(init)}): the decrease only undoes an "
                      "early rise", evidence, "Check that labels match inputs (shuffled or misaligned labels leave the "
                      "loss at the label prior), and that the LR does not overshoot at the start.")
    return result(CHECK, PASS, head, evidence)
