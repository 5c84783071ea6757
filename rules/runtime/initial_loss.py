"""initial-loss: is the first loss what a sanely initialised model gives?"""

from __future__ import annotations

import math
from typing import Optional

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, finding_at, fmt, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="initial-loss",
    code="DP102",
    summary="The first loss matches its value at a sane init: ln(C) for cross-entropy, ln 2 for BCE, Var(y) for MSE.",
)

#: Classification ratio first/expected above which the init is called overconfident (3x ln C is far past the noise of a fresh init).
CLS_FAIL_RATIO = 3.0
#: A fresh classifier lands within ~10-20% of ln C; 1.5x is already unusual.
CLS_WARN_RATIO = 1.5
#: MSE is noisier at init (the output variance adds to Var(y)), so allow more before calling it broken.
MSE_FAIL_RATIO = 10.0
#: Warn above this for MSE: output variance several times the target variance.
MSE_WARN_RATIO = 4.0
#: Below this fraction of the expected value the model already "knows" the answer at step 0.
LOW_RATIO = 0.25


PAGE = Sections(
    why=f"""
        A freshly initialised model should be unsure: its first loss is the loss of a uniform prediction,
        ln(C) for cross-entropy or NLL over C classes (C read from the logits' class dimension), ln 2 for
        binary cross-entropy (the label entropy is accepted too: an output bias set to the label prior), and
        the target variance for MSE (predicting the target mean). Far above that, the init is overconfident
        or broken (logits scaled up, a wrong output activation, a huge output bias) and the first steps are
        spent undoing it; far below, the model already knows the answer (a resumed checkpoint, or the label
        leaks into the input). The check judges each criterion term of the first step on its own, per
        element: with `reduction='sum'` the value is divided by the number of elements summed (a VAE's summed
        BCE is ln 2 per pixel), with `'none'` the mean of the elements is used, and it reads the criterion's
        own output, not the loss passed to `backward()` — so a loss divided for gradient accumulation, or
        summed with other terms (a KL term, a GAN's two halves), does not skew it; repeated calls of one
        criterion line (micro-batches) are averaged. It compares that value with the expected one: for
        classification it warns above {number(CLS_WARN_RATIO)}x and fails above {number(CLS_FAIL_RATIO)}x, for MSE
        it warns above {number(MSE_WARN_RATIO)}x and fails above {number(MSE_FAIL_RATIO)}x (the output variance adds to
        the target's at init), and it warns below {number(LOW_RATIO)}x.

        What to do: initialise the last layer small (zero or std 0.01), the output bias to the label prior
        (classification) or the target mean (regression), and normalise regression targets.
    """,
    known_problems="""
        Only losses the probe recognises get an expected value: cross-entropy, NLL, binary cross-entropy
        (with or without logits) and MSE; other terms (L1, Huber, KL, custom losses) are skipped and named,
        as are `pos_weight` BCE, the legacy `size_average`/`reduce` arguments and an `nll_loss` fed raw scores
        (loss-input's finding). Only criterion calls on the training path (an input that carries a gradient)
        before the first optimizer step are judged.
    """,
    bad="""
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
        nn.init.normal_(model[-1].weight, std=1.0)  # logits of size ~16 at init
        loss = F.cross_entropy(model(x), y)        # first loss ~10, expected ln(10) = 2.3
    """,
    good="""
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
        nn.init.zeros_(model[-1].weight)            # uniform prediction at init
        loss = F.cross_entropy(model(x), y)         # first loss ~2.3
    """,
)


def _expected(term: dict) -> tuple[float, str, float, float, Optional[float]]:
    """Expected per-element value at init, its formula, warn and fail ratios, and an accepted low value."""
    kind = term["kind"]
    if kind in ("cross_entropy", "nll"):
        classes = term.get("classes")
        if not classes or classes < 2:
            raise Skip("the number of classes could not be read from the logits")
        return math.log(classes), f"ln({classes})", CLS_WARN_RATIO, CLS_FAIL_RATIO, None
    if kind in ("bce", "bce_logits"):
        if term.get("pos_weight"):
            raise Skip("binary_cross_entropy_with_logits with pos_weight: no single expected value")
        p = term.get("target_mean")
        low_ok = -(p * math.log(p) + (1 - p) * math.log(1 - p)) if p is not None and 0 < p < 1 else None
        return math.log(2), "ln 2", CLS_WARN_RATIO, CLS_FAIL_RATIO, low_ok  # a prior-initialised bias starts at the label entropy
    if kind == "mse":
        var = term.get("target_var")
        if not var or var <= 0:
            raise Skip("the target variance is zero or unknown")
        return var, "Var(target)", MSE_WARN_RATIO, MSE_FAIL_RATIO, None
    raise Skip(f"no expected initial value for a {kind} loss")


def _terms(run: ProbeRun) -> list[dict]:
    """The criterion terms of the first step; without them (older traces), the first loss and the loss info."""
    if run.loss_terms:
        # The same criterion call over several micro-batches (gradient accumulation) is one term: averaged.
        groups: dict[tuple, list[dict]] = {}
        for t in run.loss_terms:
            groups.setdefault((t.get("kind"), t.get("path"), t.get("line"), t.get("reduction")), []).append(t)
        merged = []
        for ts in groups.values():
            t = dict(ts[0])
            values = [x["value"] for x in ts if x.get("value") is not None]
            counts = [x["count"] for x in ts if x.get("count")]
            if values:
                t["value"] = sum(values) / len(values)
            if counts:
                t["count"] = sum(counts) / len(counts)
            t["calls"] = len(ts)
            merged.append(t)
        return merged
    li = run.loss_info
    first = next((st.loss for st in run.steps if st.loss is not None), None)
    if li.get("kind") is None or first is None:
        return []
    return [{**li, "value": first, "reduction": "mean"}]


def _judge(term: dict, bad_input: set[str]) -> dict:
    """One term's verdict: status, the line for the summary, evidence."""
    kind, value, reduction = term["kind"], term.get("value"), term.get("reduction", "mean")
    if kind in bad_input:
        raise Skip(f"{kind} does not receive what it expects (see loss-input)")
    if value is None or not math.isfinite(value):
        raise Skip("the first loss is not finite (see non-finite-loss)")
    expected, formula, warn_r, fail_r, low_ok = _expected(term)
    if reduction == "sum":
        count = term.get("count")
        if not count:
            raise Skip(f"{kind} with reduction='sum' over an unknown number of elements")
        per, how = value / count, f"sum over {int(round(count))} elements, {fmt(value / count)} each"
    elif reduction in ("mean", "none"):
        per, how = value, ("mean of reduction='none'" if reduction == "none" else "")
    else:
        raise Skip(f"{kind} with the legacy size_average/reduce arguments")
    ratio = per / expected
    ev = {"loss_kind": kind, "reduction": reduction, "first_loss": value, "per_element": per, "expected": expected,
          "expected_formula": formula, "ratio": ratio, "classes": term.get("classes"), "count": term.get("count")}
    if low_ok is not None:
        ev["label_entropy"] = low_ok
    shown = fmt(value) + (f" ({how})" if how else "")
    head = f"{kind} {shown} vs expected {fmt(expected)} ({formula}) per element: {ratio:.2f}x"
    lo = LOW_RATIO * (low_ok / expected) if low_ok else LOW_RATIO
    if ratio > warn_r:
        why = "overconfident or broken init"
        mean = term.get("target_mean")
        if kind == "mse" and mean is not None and abs(mean) > 3 * math.sqrt(expected):
            why = f"targets are not centred (mean {fmt(mean)}): normalise them or set the output bias"
        return {"status": FAIL if ratio > fail_r else WARN, "text": f"{head} — {why}", "evidence": ev, "term": term}
    if ratio < lo:
        return {"status": WARN, "text": f"{head} — suspiciously low at step 0 (resumed weights, or the label leaks into "
                "the input?)", "evidence": ev, "term": term, "low": True}
    return {"status": PASS, "text": head, "evidence": ev, "term": term}


def evaluate(run: ProbeRun):
    terms = _terms(run)
    if not terms:
        raise Skip("no torch.nn.functional loss seen on the training path, so no expected value is known")
    bad_input = {k for s in run.sampled_steps() for k, st in s.loss_inputs.items()
                 if k == "nll" and (st.get("max", 0) > 1e-4 or (st.get("lse_abs_max") or 0) > 0.05)}
    judged, skipped = [], []
    for term in terms:
        try:
            judged.append(_judge(term, bad_input))
        except Skip as skip:
            skipped.append(f"{term.get('kind')}: {skip.reason}")
    if not judged:
        raise Skip(skipped[0] if len(skipped) == 1 else "; ".join(dict.fromkeys(skipped)))
    order = {FAIL: 2, WARN: 1, PASS: 0}
    worst = max(judged, key=lambda j: order[j["status"]])
    status = worst["status"]
    evidence = dict(worst["evidence"])
    evidence["terms"] = [j["evidence"] for j in judged]
    if skipped:
        evidence["not_judged"] = skipped
    texts = list(dict.fromkeys(j["text"] for j in judged))
    summary = texts[0] if len(texts) == 1 else f"{len(judged)} loss terms: " + "; ".join(texts)
    if len(judged) > 1 and status != PASS:
        summary = worst["text"] + f" ({len(judged)} loss terms judged)"
    if skipped and status == PASS and len(terms) > len(judged):
        summary += f" ({len(terms) - len(judged)} other term(s) not judged)"
    if status == PASS:
        return result(CHECK, PASS, summary, evidence)
    term = worst["term"]
    if worst.get("low"):
        return result(CHECK, WARN, summary, evidence,
                      "If this is not a resumed checkpoint, check that the inputs do not contain the target.")
    findings = finding_at(CHECK, term.get("path"), term.get("line"), worst["text"], evidence=dict(worst["evidence"]))
    return result(CHECK, status, summary, evidence,
                  "Initialise the last layer small (zero or std 0.01), the output bias to the label prior or "
                  "the target mean, and normalise regression targets.", findings)
