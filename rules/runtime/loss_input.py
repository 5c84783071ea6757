"""loss-input: each loss receives what it expects — logits, or log-probabilities for ``nll_loss``."""

from __future__ import annotations

import math

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, RuntimeCheck, Skip, fmt, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="loss-input",
    code="DP111",
    summary="Each loss receives what it expects: logits for cross_entropy and *_with_logits, log-probabilities for nll_loss.",
)

#: Rows of probabilities sum to 1 up to float32 rounding over a few thousand classes.
ROW_SUM_TOL = 1e-3
#: log-probabilities have a row logsumexp of exactly 0 up to rounding; 0.05 leaves room for fp16 outputs.
LSE_TOL = 0.05
#: Fewer values could sit in (0, 1) by chance at init; 16 logits all in (0, 1) does not happen to a fresh head.
MIN_ELEMENTS = 16


PAGE = Sections(
    why=f"""
        `cross_entropy`/`CrossEntropyLoss` apply `log_softmax` themselves and `binary_cross_entropy_with_logits`
        applies the sigmoid itself: given probabilities, they squash them again, the loss can never reach its
        floor (cross-entropy stays above ln(1 + (C−1)/e)) and the gradients shrink. `nll_loss` expects
        log-probabilities: given raw scores it is unbounded below, and training drives the scores up instead
        of learning. On sampled steps the check reads what these losses receive on the training path (the
        first call of each kind per step, up to 256 rows): the minimum and maximum, and per row (the class
        dimension) the sum and the logsumexp. It fails "probabilities into cross_entropy" when every value is
        in [0, 1] and every row sums to 1 (within {number(ROW_SUM_TOL)}) on every sampled step; "sigmoid outputs into
        binary_cross_entropy_with_logits" when every value lies strictly inside (0, 1) on every sampled step
        (at least {MIN_ELEMENTS} values); and "logits into nll_loss" when values are positive or the rows'
        logsumexp is far from 0 (more than {number(LSE_TOL)}) — probabilities into `nll_loss` are reported as a
        missing `log`.

        What to do: pass the raw logits to `cross_entropy` and `binary_cross_entropy_with_logits` (apply
        softmax/sigmoid only where you need probabilities, e.g. for metrics), and put `log_softmax` in front of
        `nll_loss` (or use `cross_entropy` on the logits).
    """,
    known_problems="""
        Log-probabilities into `cross_entropy` are fine (`log_softmax` is idempotent) and pass. Losses called
        only under `no_grad` (evaluation) are not read. `nll_loss` used on purpose as a weighted pick of
        arbitrary scores (not log-probabilities) fails. A logits head whose outputs happen to lie in (0, 1) on
        every sampled step would fail the BCE test; a fresh head does not.
    """,
    bad="""
        probs = torch.softmax(model(x), dim=1)
        loss = F.cross_entropy(probs, y)     # softmax applied twice
    """,
    good="""
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    """,
)


def _probabilities(s: dict) -> bool:
    return (s.get("min", -1) >= 0 and s.get("max", 2) <= 1 and s.get("row_sum_err") is not None
            and s["row_sum_err"] <= ROW_SUM_TOL)


def evaluate(run: ProbeRun):
    seen: dict[str, list[dict]] = {}
    for s in run.sampled_steps():
        for kind, stats in s.loss_inputs.items():
            seen.setdefault(kind, []).append(stats)
    if not seen:
        raise Skip("no cross_entropy, nll_loss or binary_cross_entropy_with_logits call on the training path was seen")
    line = {t.get("kind"): (t.get("path"), t.get("line")) for t in reversed(run.loss_terms)}
    li = run.loss_info
    fails, evidence = [], {}
    for kind, stats in seen.items():
        lo, hi = min(s["min"] for s in stats), max(s["max"] for s in stats)
        evidence[kind] = {"min": lo, "max": hi, "sampled_steps": len(stats),
                          "row_sum_error_max": max((s.get("row_sum_err") or 0.0) for s in stats),
                          "row_logsumexp_abs_max": max((s.get("lse_abs_max") or 0.0) for s in stats)}
        if kind == "cross_entropy" and all(_probabilities(s) for s in stats):
            c = next((t.get("classes") for t in run.loss_terms if t.get("kind") == kind), None) or li.get("classes")
            floor = f"; the loss can never fall below {math.log(1 + (c - 1) / math.e):.2f} (C={c})" if c and c > 1 else ""
            fails.append((kind, f"cross_entropy receives probabilities (values in [{fmt(lo)}, {fmt(hi)}], every row sums to 1): "
                                f"a softmax is applied before a loss that applies log_softmax itself{floor}"))
        elif kind == "bce_logits" and all(s["min"] > 0 and s["max"] < 1 for s in stats) \
                and sum(s.get("elements", 0) for s in stats) >= MIN_ELEMENTS:
            fails.append((kind, f"binary_cross_entropy_with_logits receives values inside (0, 1) only ([{fmt(lo)}, {fmt(hi)}]): "
                                "sigmoid outputs given to a loss that applies the sigmoid itself"))
        elif kind == "nll":
            if all(_probabilities(s) for s in stats):
                fails.append((kind, f"nll_loss receives probabilities (rows sum to 1, values in [{fmt(lo)}, {fmt(hi)}]), "
                                    "not log-probabilities: use log_softmax instead of softmax"))
            elif all(s["max"] > 1e-4 or (s.get("lse_abs_max") or 0.0) > LSE_TOL for s in stats):
                fails.append((kind, f"nll_loss receives raw scores (values up to {fmt(hi)}, row logsumexp up to "
                                    f"{fmt(evidence[kind]['row_logsumexp_abs_max'])} instead of 0), not log-probabilities: "
                                    "log_softmax is missing"))
    if fails:
        findings = []
        for kind, msg in fails:
            path, ln = line.get(kind, (li.get("path"), li.get("line")))
            findings += CHECK.finding(path, ln, msg, evidence=evidence.get(kind))
        return result(CHECK, FAIL, "; ".join(m for _, m in fails), evidence,
                      "Give cross_entropy / binary_cross_entropy_with_logits the raw logits (drop the softmax/sigmoid), "
                      "and put log_softmax in front of nll_loss (or use cross_entropy on the logits).", findings)
    kinds = ", ".join(sorted(seen))
    return result(CHECK, PASS, f"{kinds}: inputs look like what the loss expects", evidence)
