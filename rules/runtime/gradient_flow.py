"""gradient-flow: every trainable parameter gets a useful gradient.

Measures, on sampled steps, just before ``optimizer.step()``: which parameters have ``grad is None``,
the norm of each parameter's gradient (one ``torch._foreach_norm``), and the global norm.

- fail "no gradient": a parameter in the optimizer with ``requires_grad=True`` whose ``.grad`` is None on
  every sampled step — an unused layer, or a branch cut off by ``.detach()``/``.item()``/``.numpy()``/
  ``torch.no_grad()``. Parameters with ``requires_grad=False`` are frozen on purpose: listed as frozen,
  never an error.
- fail "all-zero": a gradient that is exactly zero on every sampled step (a dead path: ReLUs that never
  fire, a multiplication by zero, a mask that drops everything).
- warn "vanishing": a parameter's gradient norm more than ``VANISH_RATIO`` below the largest one (not the bias
  of a layer feeding batch norm, which gets no gradient by construction).
- warn/fail "exploding": a global norm above ``EXPLODE_WARN``/``EXPLODE_FAIL``, or growing more than
  ``GROWTH_WARN``x from the first to the last sampled step. For a loss summed over its elements
  (``reduction='sum'``, e.g. a VAE's reconstruction term) the norm is judged per summed element, since the
  gradient then scales with their number.
Norms are read *before* ``clip_grad_norm_``/``clip_grad_value_`` when the script clips (after clipping they
would only show the clip value); the clip and how often it cut are reported. A parameter whose gradient was
produced by backward and then cleared before the step is gradient-clearing's finding, not an unused layer;
a parameter with a gradient that no optimizer holds is optimizer-coverage's.

What to do: remove or use the layer, drop the ``detach()``, check the init and the normalisation of
deep stacks (residuals, LayerNorm), clip gradients (``clip_grad_norm_``) and lower the LR.
"""

from __future__ import annotations

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
