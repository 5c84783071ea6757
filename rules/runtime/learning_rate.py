"""learning-rate: the learning rate is not too high — judged on the loss's trajectory, not first-vs-last."""

from __future__ import annotations

import math
import statistics

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, RuntimeCheck, Skip, fmt, median, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="learning-rate",
    code="DP116",
    summary="The learning rate is not too high: the loss neither climbs above its start nor oscillates, updates are not huge.",
)

#: Fewer losses cannot show a trajectory.
MIN_STEPS = 6
#: A loss 50% above its value at init for two steps is not noise of a healthy run: the steps overshoot.
RISE = 0.5
#: 20% above the start for three steps in a row: the loss is going the wrong way, not spiking once.
SUSTAINED_RISE = 0.2
SUSTAINED_STEPS = 3
#: Robust standard deviations of the step-to-step change a rise must exceed (batch noise is not a rise).
NOISE_Z = 3.0
#: An up or down move of half the loss's level in one step is a swing, not batch noise.
SWING = 0.5
#: Three alternating big swings in a short probe is an oscillation.
MIN_SWINGS = 3
#: Updates rewriting 10% of the weights per step: 10x what a small net under Adam shows (~1e-2).
EARLY_RATIO = 0.1
#: 30% of the weights per step on the first steps, with the loss going up: the LR overshoots from step 0.
EARLY_FAIL = 0.3
#: "goes above its start" for the early-ratio rule: 10% above the first loss, beyond noise.
EARLY_RISE = 0.1


PAGE = Sections(
    why=f"""
        An LR that is too high shows in the first steps: the loss jumps above its value at init and swings,
        even when it later comes back down — which a first-vs-last comparison calls "decreasing" (nanoGPT at
        lr 0.1: 4.42 → 12.0 → 3.3). The check reads the loss of every probed step before any NaN and the
        update/weight ratio ‖Δw‖/‖w‖ of the first sampled steps (0, 1, 2; the largest parameter group counts).
        It fails "rises" when the loss stays more than {number(SUSTAINED_RISE * 100)}% above the first loss for
        {SUSTAINED_STEPS} steps in a row, or more than {number(RISE * 100)}% above it for two, beyond its batch noise
        ({number(NOISE_Z)} robust standard deviations of the step-to-step change among the losses that did not rise); it
        fails "oscillates" on {MIN_SWINGS} or more up-down swings each larger than {number(SWING * 100)}% of the loss's
        level; and it fails "huge first steps" when the first steps rewrite more than {number(EARLY_FAIL * 100)}% of the
        weights per step and the loss goes more than {number(EARLY_RISE * 100)}% above its start. The LR and the
        early update ratio are named.

        What to do: lower the LR (try 10x smaller), add warm-up, clip gradients; `--recipe lr-range` suggests
        a value.
    """,
    known_problems=f"""
        Needs at least {MIN_STEPS} finite losses. A single spike that recovers at the next step (Adadelta's first
        step on MNIST) is not a fail. The trajectory is not judged when several optimizers step (a GAN's
        discriminator loss need not fall). A large early update ratio alone does not fail: weights initialised
        near zero show it too (update-ratio reports it). A loss that turns NaN is non-finite-loss's finding;
        this check judges the steps before it.
    """,
    bad="""
        optimizer = torch.optim.Adam(model.parameters(), lr=1.0)    # loss 2.3 -> 94 -> 135 -> ...
    """,
    good="""
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    """,
)


def _robust_sigma(losses: list[float]) -> float:
    diffs = [abs(b - a) for a, b in zip(losses, losses[1:])]
    return 1.4826 * statistics.median(diffs) / math.sqrt(2) if diffs else 0.0


def evaluate(run: ProbeRun):
    healthy = [s for s in run.healthy_steps() if s.loss is not None and math.isfinite(s.loss)]
    losses = [s.loss for s in healthy]
    if len(losses) < MIN_STEPS:
        raise Skip(f"only {len(losses)} finite loss value(s); need {MIN_STEPS} to judge a trajectory")
    # per parameter group, the median over steps 0-2; the largest group counts (a group of LayerNorm weights
    # at 1.0 barely moves while the matrices are rewritten)
    early = [s for s in run.sampled_steps() if s.step <= 2 and s.update_ratio]
    groups = max((len(s.update_ratio) for s in early), default=0)
    per_group = [median([s.update_ratio[g] for s in early if g < len(s.update_ratio) and s.update_ratio[g] is not None])
                 for g in range(groups)]
    early_ratio = max((r for r in per_group if r is not None), default=None)
    # the largest LR each group reached (a warm-up starts low), shown once per distinct value
    groups_lr = max((len(s.lr) for s in healthy), default=0)
    lr = [max((s.lr[g] for s in healthy if g < len(s.lr) and s.lr[g] is not None), default=None) for g in range(groups_lr)]
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

    def longest_run(limit: float) -> int:
        best = cur = 0
        for v in losses[1:]:
            cur = cur + 1 if v > limit and v - start > NOISE_Z * sigma else 0
            best = max(best, cur)
        return best

    sustained, high = longest_run(start * (1 + SUSTAINED_RISE)), longest_run(start * (1 + RISE))
    evidence.update(steps_above_start_20pct=sustained, steps_above_start_50pct=high)
    if not several and start > 0:
        if sustained >= SUSTAINED_STEPS or high >= 2:
            problems.append(f"the loss rose from {fmt(start)} to {fmt(peak)} ({peak / start:.1f}x its start) at step "
                            f"{healthy[peak_i].step} and stayed above {fmt(start * (1 + SUSTAINED_RISE))} for {sustained} steps")
        if swings >= MIN_SWINGS:
            problems.append(f"it swings up and down by more than {SWING:.0%} of its level {swings} times")
        rose = peak > start * (1 + EARLY_RISE) and peak - start > NOISE_Z * sigma
        if not problems and early_ratio is not None and early_ratio > EARLY_FAIL and rose:
            problems.append(f"the first steps change the weights by {fmt(early_ratio)} of their size per step "
                            f"(healthy ~1e-3..1e-2) and the loss rose from {fmt(start)} to {fmt(peak)}")
    if problems and early_ratio is not None and "change the weights" not in problems[-1]:
        big = " — far above" if early_ratio > EARLY_RATIO else ""
        problems.append(f"the first steps' update/weight ratio is {fmt(early_ratio)} (healthy ~1e-3..1e-2{big})")
    shown = list(dict.fromkeys(fmt(x) for x in lr if x is not None))
    lr_text = f" at lr {', '.join(shown)}" if shown else ""
    if problems:
        return result(CHECK, FAIL, f"learning rate too high{lr_text}: " + "; ".join(problems), evidence,
                      "Lower the LR (try 10x smaller) or add warm-up and gradient clipping; `--recipe lr-range` suggests a value.")
    tail = " (trajectory not judged: several optimizers step)" if several else ""
    ratio_text = f", early update ratio {fmt(early_ratio)}" if early_ratio is not None else ""
    return result(CHECK, PASS, f"loss {fmt(start)} -> peak {fmt(peak)}, {swings} big swing(s){ratio_text}{tail}", evidence)
