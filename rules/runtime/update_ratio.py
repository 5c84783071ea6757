"""update-ratio: how much one optimizer step changes the weights, relative to their size."""

from __future__ import annotations

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, fmt, median, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="update-ratio",
    code="DP106",
    summary="Each step's actual update ‖Δw‖/‖w‖ per parameter group is near 1e-3 (not zero, not huge).",
)

#: 1e-8 is below float32 resolution of most weights: the step did not change them at all.
ZERO_RATIO = 1e-8
#: 100x below the healthy ~1e-3: a 20-step probe would need thousands of steps to learn anything.
LOW_RATIO = 1e-5
#: Weights changing by 10% per step: noise dominates learning.
HIGH_WARN = 0.1
#: A step the size of the weights themselves: the model is overwritten each step.
HIGH_FAIL = 1.0


PAGE = Sections(
    why=f"""
        The learning rate that matters is how much a step changes the weights relative to their size. The
        check copies the weights just before `optimizer.step()` on sampled steps and compares them right
        after, so it measures the actual update ‖Δw‖/‖w‖ per parameter group whatever the optimizer does
        (SGD, Adam's normalised steps, weight decay, clipping), not LR×grad. About 1e-3 is the usual healthy
        value (Karpathy's rule of thumb; small nets with Adam sit near 1e-2). On the median over the sampled
        steps it fails "zero" below {number(ZERO_RATIO)} (the group's LR is 0, its gradients are zero, or the step is
        skipped), warns "too small" below {number(LOW_RATIO)} (training crawls), warns "too large" above
        {number(HIGH_WARN)} and fails above {number(HIGH_FAIL)} (each step rewrites a large part of the weights: noisy
        training or divergence).

        What to do: scale the group's LR by the factor that brings the ratio near 1e-3..1e-2 (the evidence
        shows the LR and the ratio per group); check schedulers that start at 0 and per-group LR settings.
    """,
    known_problems="""
        Only sampled steps of `torch.optim` optimizers are measured, and only their median is judged: a
        schedule that starts at 0 (warm-up) drags the median down on a short probe, and a single huge step
        among small ones goes unnoticed. Weights updated outside `optimizer.step()` are not seen.
    """,
    bad="""
        optimizer = torch.optim.Adam(model.parameters(), lr=1.0)   # each step moves every weight by ~1
    """,
    good="""
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    """,
)


def evaluate(run: ProbeRun):
    sampled = [s for s in run.sampled_steps() if s.update_ratio]
    if not sampled:
        raise Skip("no sampled step with update statistics")
    groups = max(len(s.update_ratio) for s in sampled)
    per_group = []
    for g in range(groups):
        vals = [s.update_ratio[g] for s in sampled if g < len(s.update_ratio) and s.update_ratio[g] is not None]
        lr = next((s.lr[g] for s in reversed(sampled) if g < len(s.lr)), None)
        per_group.append({"group": g, "median_ratio": median(vals), "lr": lr, "samples": len(vals)})
    worst_param = {}
    last = sampled[-1].param_update_ratio
    if last:
        vals = {k: v for k, v in last.items() if v is not None}
        if vals:
            lo = min(vals, key=vals.get)
            hi = max(vals, key=vals.get)
            worst_param = {"smallest": {lo: vals[lo]}, "largest": {hi: vals[hi]}}
    evidence = {"groups": per_group, "params": worst_param, "healthy": 1e-3}
    fails, warns = [], []
    for g in per_group:
        r = g["median_ratio"]
        if r is None:
            continue
        label = f"group {g['group']} (lr {fmt(g['lr'])})"
        if r < ZERO_RATIO:
            fails.append(f"{label}: updates are zero ({fmt(r)})")
        elif r < LOW_RATIO:
            warns.append(f"{label}: update ratio {fmt(r)} far below ~1e-3")
        elif r > HIGH_FAIL:
            fails.append(f"{label}: update ratio {fmt(r)} — each step rewrites the weights")
        elif r > HIGH_WARN:
            warns.append(f"{label}: update ratio {fmt(r)} far above ~1e-3")
    if fails or warns:
        return result(CHECK, FAIL if fails else WARN, "; ".join(fails + warns), evidence,
                      "Scale that group's LR so the ratio lands near 1e-3..1e-2; check per-group LRs, schedulers "
                      "starting at 0, and that the group's parameters receive gradients.")
    ratios = ", ".join(fmt(g["median_ratio"]) for g in per_group)
    return result(CHECK, PASS, f"median ‖Δw‖/‖w‖ per group: {ratios}", evidence)
