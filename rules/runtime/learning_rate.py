"""learning-rate: the learning rate is not too high — judged on the loss's trajectory, not first-vs-last.

Measures: the loss of every probed step before any NaN, and the update/weight ratio ‖Δw‖/‖w‖ of the first
sampled steps (0, 1, 2).

- fail "rises": the loss climbs well above its start — more than ``RISE`` above the first loss and beyond its
  batch-to-batch noise (``NOISE_Z`` robust standard deviations of the step-to-step change among the losses
  that did not rise) — even if it comes
  back down later (nanoGPT at lr 0.1: 4.42 → 12.0 → 3.3 passes a first-vs-last test);
- fail "oscillates": at least ``MIN_SWINGS`` up-down swings each larger than ``SWING`` of the loss's level;
The early update ratio (10x the ~1e-2 of a small net under Adam is ``EARLY_RATIO``) and the LR are named
alongside, but a large ratio alone does not fail here: weights initialised near zero show it too (bad-init),
and update-ratio reports it.

Stays silent (skip) with fewer than ``MIN_STEPS`` finite losses and, for the trajectory, when several
optimizers step (a GAN's discriminator loss need not fall). A loss that turns NaN is non-finite-loss's
finding; this check judges the steps before it.

What to do: lower the LR (try 10x smaller), add warm-up, clip gradients; the LR range test
(``--recipe lr-range``) suggests a value.
"""

from __future__ import annotations

import math
import statistics

from doctor.probe.checks import FAIL, PASS, RuntimeCheck, Skip, fmt, median, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="learning-rate",
    code="DP116",
    summary="The learning rate is not too high: the loss neither climbs above its start nor oscillates, updates are not huge.",
)

#: Fewer losses cannot show a trajectory.
MIN_STEPS = 6
#: A loss 50% above its value at init is not noise of a healthy run: the steps overshoot.
RISE = 0.5
#: Robust standard deviations of the step-to-step change a rise must exceed (batch noise is not a rise).
NOISE_Z = 3.0
#: An up or down move of half the loss's level in one step is a swing, not batch noise.
SWING = 0.5
#: Three alternating big swings in a short probe is an oscillation.
MIN_SWINGS = 3
#: Updates rewriting 10% of the weights per step: 10x what a small net under Adam shows (~1e-2).
EARLY_RATIO = 0.1


def _robust_sigma(losses: list[float]) -> float:
    diffs = [abs(b - a) for a, b in zip(losses, losses[1:])]
    return 1.4826 * statistics.median(diffs) / math.sqrt(2) if diffs else 0.0


def evaluate(run: ProbeRun):
    healthy = [s for s in run.healthy_steps() if s.loss is not None and math.isfinite(s.loss)]
    losses = [s.loss for s in healthy]
    if len(losses) < MIN_STEPS:
        raise Skip(f"only {len(losses)} finite loss value(s); need {MIN_STEPS} to judge a trajectory")
    early = [s for s in run.sampled_steps() if s.step <= 2 and s.update_ratio]
    ratios = [r for s in early for r in s.update_ratio if r is not None]
    early_ratio = median(ratios) if ratios else None
    lr = next((s.lr for s in healthy if s.lr), [])
    # The start is the loss at init (initial-loss judges it). The batch noise is estimated from the losses that
    # did not rise, so a divergence does not hide itself by inflating the noise estimate.
    start = losses[0]
    sigma = _robust_sigma([v for v in losses if v <= start * (1 + RISE)])
    level = statistics.median(losses)
    peak_i = max(range(1, len(losses)), key=lambda i: losses[i])
    peak = losses[peak_i]
    diffs = [b - a for a, b in zip(losses, losses[1:])]
    swings = sum(1 for a, b in zip(diffs, diffs[1:]) if a * b < 0 and min(abs(a), abs(b)) > SWING * abs(level))
    evidence = {"first_loss": start, "peak_loss": peak, "peak_step": healthy[peak_i].step, "noise_sigma": sigma,
                "swings": swings, "early_update_ratio": early_ratio, "lr": lr, "losses": len(losses)}
    problems = []
    several = run.other_optimizer_steps > 0
    if not several:
        if start > 0 and peak > start * (1 + RISE) and peak - start > NOISE_Z * sigma:
            problems.append(f"the loss rose from {fmt(start)} to {fmt(peak)} ({peak / start:.1f}x its start) at step "
                            f"{healthy[peak_i].step}")
        if swings >= MIN_SWINGS:
            problems.append(f"it swings up and down by more than {SWING:.0%} of its level {swings} times")
    if problems and early_ratio is not None:
        big = " — far above" if early_ratio > EARLY_RATIO else ""
        problems.append(f"the first steps' update/weight ratio is {fmt(early_ratio)} (healthy ~1e-3..1e-2{big})")
    lr_text = f" at lr {', '.join(fmt(x) for x in lr if x is not None)}" if lr else ""
    if problems:
        return result(CHECK, FAIL, f"learning rate too high{lr_text}: " + "; ".join(problems), evidence,
                      "Lower the LR (try 10x smaller) or add warm-up and gradient clipping; `--recipe lr-range` suggests a value.")
    tail = " (trajectory not judged: several optimizers step)" if several else ""
    ratio_text = f", early update ratio {fmt(early_ratio)}" if early_ratio is not None else ""
    return result(CHECK, PASS, f"loss {fmt(start)} -> peak {fmt(peak)}, {swings} big swing(s){ratio_text}{tail}", evidence)
