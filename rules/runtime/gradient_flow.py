"""gradient-flow: every trainable parameter gets a useful gradient."""

from __future__ import annotations

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, fmt, median, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="gradient-flow",
    code="DP105",
    summary="Every trainable parameter gets a gradient that is neither missing, zero, vanishing nor exploding.",
)

#: Six orders of magnitude below the largest gradient: the layer effectively does not learn.
VANISH_RATIO = 1e-6
#: Global norms of healthy runs are O(0.1-100); 1e3 deserves a look (clip or lower the LR).
EXPLODE_WARN = 1e3
#: At 1e5 an un-clipped step moves weights by LR*1e5: divergence is a matter of steps.
EXPLODE_FAIL = 1e5
#: Growth of the global norm from the first to the last sampled step; 100x within a probe is a runaway.
GROWTH_WARN = 100.0
#: 1e4x growth within a probe is an explosion in progress.
GROWTH_FAIL = 1e4
#: Names listed per category in the summary; the evidence has them all.
SHOW = 4


PAGE = Sections(
    why=f"""
        A parameter that gets no gradient, or a useless one, does not learn, and nothing in the loss curve
        says which. On sampled steps, just before `optimizer.step()`, the check records which parameters
        have `grad is None`, each parameter's gradient norm and the global norm. It fails "no gradient" for a
        parameter in the optimizer with `requires_grad=True` whose `.grad` is None on every sampled step
        (an unused layer, or a branch cut off by `.detach()`, `.item()`, `.numpy()` or `torch.no_grad()`),
        and "all-zero" for a gradient that is exactly zero on every sampled step (ReLUs that never fire, a
        multiplication by zero, a mask that drops everything). It warns "vanishing" for a parameter whose
        median gradient norm is below {number(VANISH_RATIO)} of the largest one. It warns when the
        global norm exceeds {number(EXPLODE_WARN)} or grows more than {number(GROWTH_WARN)}x from the first to the last
        sampled step, and fails above {number(EXPLODE_FAIL)} or past {number(GROWTH_FAIL)}x growth (for a loss summed
        over its elements, `reduction='sum'`, per summed element: the gradient scales with their number).
        Norms are read *before* `clip_grad_norm_`/`clip_grad_value_` when the script clips, and the clip and how
        often it cut are reported. Parameters with `requires_grad=False` are frozen on purpose: listed, never an
        error; the bias of a layer feeding batch norm gets no gradient by construction and is not reported.
        Gradients produced by backward and then cleared before the step are gradient-clearing's finding (not
        an unused layer), and a parameter with a gradient that no optimizer holds is optimizer-coverage's.

        What to do: remove or use the layer, drop the `detach()`, add every trainable parameter to the
        optimizer, check the init and normalisation of deep stacks, clip gradients and lower the LR.
    """,
    known_problems="""
        Only sampled steps are judged (every few steps, see `--sample-every`). Clipping is seen through
        `torch.nn.utils.clip_grad_norm_`/`clip_grad_value_`; a script that clips its own way is read after
        its clip. Which bias feeds batch norm is read from the module registration order (Conv then
        BatchNorm), not from the graph. Parameters that are legitimately rarely touched (embeddings of rare
        tokens) can be reported as vanishing.
    """,
    bad="""
        features = encoder(x).detach()        # the encoder gets no gradient
        loss = loss_fn(head(features), y)
    """,
    good="""
        features = encoder(x)
        loss = loss_fn(head(features), y)
    """,
)


def _names(names: list[str]) -> str:
    more = f" (+{len(names) - SHOW} more)" if len(names) > SHOW else ""
    return ", ".join(names[:SHOW]) + more


def evaluate(run: ProbeRun):
    sampled = [s for s in run.sampled_steps() if s.param_grad_norms or s.none_grads]
    if not sampled:
        raise Skip("no sampled step with gradient statistics")
    judged = [s for s in sampled if s.grad_after_backward]
    if judged and all(any((g or 0) > 0 for g in s.grad_after_backward) and not s.grad_norm for s in judged):
        raise Skip("backward() produced gradients but they were gone at every optimizer step: cleared between "
                   "backward() and step() (see gradient-clearing)")
    frozen = [p.name for p in run.params if not p.requires_grad]
    trainable_in_opt = [p.name for p in run.params if p.in_optimizer and p.requires_grad]
    none_always = [n for n in trainable_in_opt if all(n in s.none_grads for s in sampled)]
    if not run.params:  # parameter names unknown: fall back to what the steps report
        none_always = sorted(set.intersection(*(set(s.none_grads) for s in sampled)))
    per_param: dict[str, list[float]] = {}
    for s in sampled:
        for name, v in s.param_grad_norms.items():
            per_param.setdefault(name, []).append(v)
    med = {n: median(v) for n, v in per_param.items()}
    before_norm = {p.name for p in run.params if p.before_norm}  # bias feeding batch norm: ~0 by construction
    zero = [n for n, vals in per_param.items() if vals and all(v == 0 for v in vals) and n not in before_norm]
    largest = max((v for v in med.values() if v), default=0.0)
    vanishing = [n for n, v in med.items() if v and largest and v < largest * VANISH_RATIO and n not in before_norm]
    norms = [s.grad_norm for s in sampled if s.grad_norm is not None]
    summed = next((t for t in run.loss_terms if t.get("reduction") == "sum" and t.get("count")), None)
    scale = float(summed["count"]) if summed and summed is run.loss_terms[0] else 1.0
    peak = max(norms, default=None)
    judged_peak = peak / scale if peak is not None else None
    growth = (norms[-1] / norms[0]) if len(norms) >= 2 and norms[0] > 0 else None
    evidence = {
        "global_norm": {"first": norms[0] if norms else None, "last": norms[-1] if norms else None, "max": peak},
        "growth": growth,
        "no_grad": none_always,
        "all_zero": zero,
        "vanishing": vanishing,
        "frozen": frozen,
        "median_grad_norm": med,
        "sampled_steps": [s.step for s in sampled],
    }
    problems_fail, problems_warn = [], []
    if none_always:
        problems_fail.append(f"no gradient for {_names(none_always)} (unused layer or detached branch)")
    if zero:
        problems_fail.append(f"all-zero gradient for {_names(zero)}")
    if scale != 1.0:
        evidence["norm_scale"] = {"reduction": "sum", "elements": scale, "peak_per_element": judged_peak}
    if judged_peak is not None and judged_peak > EXPLODE_FAIL:
        problems_fail.append(f"exploding: global norm {fmt(peak)}")
    elif growth is not None and growth > GROWTH_FAIL:
        problems_fail.append(f"exploding: global norm grew {fmt(growth)}x")
    elif judged_peak is not None and judged_peak > EXPLODE_WARN:
        problems_warn.append(f"large global norm {fmt(peak)}")
    elif growth is not None and growth > GROWTH_WARN:
        problems_warn.append(f"global norm grew {fmt(growth)}x")
    if vanishing:
        problems_warn.append(f"vanishing gradient for {_names(vanishing)} (<{VANISH_RATIO:g} of the largest)")
    clips = [s.clip for s in sampled if s.clip]
    tail = f"; {len(frozen)} frozen parameter(s)" if frozen else ""
    if clips:
        limit = clips[-1].get("limit")
        cut = sum(1 for c in clips if c.get("total_norm") is not None and limit is not None and c["total_norm"] > limit)
        kind = "clip_grad_norm_ max_norm" if clips[-1].get("kind") == "norm" else "clip_grad_value_ clip_value"
        evidence["clip"] = {"kind": clips[-1].get("kind"), "limit": limit, "clipped_steps": cut, "sampled_steps": len(clips),
                            "norms_before_clip": any(s.grad_norm_before_clip for s in sampled)}
        tail += f"; norms before clipping ({kind} {fmt(limit)}" + (f", cut on {cut} of {len(clips)} sampled steps)" if clips[-1].get("kind") == "norm" else ")")
    if problems_fail or problems_warn:
        status = FAIL if problems_fail else WARN
        return result(CHECK, status, "; ".join(problems_fail + problems_warn) + tail, evidence,
                      "Use or remove layers without gradient, drop detach()/no_grad() on the loss path, add every "
                      "trainable parameter to the optimizer, clip gradients (clip_grad_norm_) and check the init.")
    return result(CHECK, PASS, f"{len(med)} parameter(s) with gradients, global norm {fmt(norms[-1] if norms else None)}{tail}",
                  evidence)
