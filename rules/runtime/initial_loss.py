"""initial-loss: is the first loss what a sanely initialised model gives?"""

from __future__ import annotations

import math

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, SKIP, WARN, RuntimeCheck, fmt, no_steps, result, finding_at
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
        leaks into the input). The check compares the first probed loss with that value: for
        classification it warns above {number(CLS_WARN_RATIO)}x and fails above {number(CLS_FAIL_RATIO)}x, for MSE
        it warns above {number(MSE_WARN_RATIO)}x and fails above {number(MSE_FAIL_RATIO)}x (the output variance adds to
        the target's at init), and it warns below {number(LOW_RATIO)}x.

        What to do: initialise the last layer small (zero or std 0.01), the output bias to the label prior
        (classification) or the target mean (regression), and normalise regression targets.
    """,
    known_problems="""
        Only losses the probe recognises get an expected value: cross-entropy, NLL, binary cross-entropy
        (with or without logits) and MSE; other losses (L1, Huber, KL...) are skipped. The loss's reduction
        and composition are not taken into account yet: with `reduction="sum"` the first loss is the
        per-element value times the number of elements and fails as far too high, a loss divided for
        gradient accumulation reads low, and a sum of several terms is compared as if it were one.
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


def evaluate(run: ProbeRun):
    skip = no_steps(CHECK, run)
    if skip:
        return skip
    li = run.loss_info
    kind = li.get("kind")
    first = next((s.loss for s in run.steps if s.loss is not None), None)
    if first is None:
        return result(CHECK, SKIP, "no loss seen")
    if not math.isfinite(first):
        return result(CHECK, SKIP, "the first loss is not finite (see non-finite-loss)")
    if kind is None:
        return result(CHECK, SKIP, "no torch.nn.functional loss seen, so no expected value is known")
    evidence = {"loss_kind": kind, "first_loss": first}
    if kind in ("cross_entropy", "nll"):
        classes = li.get("classes")
        if not classes or classes < 2:
            return result(CHECK, SKIP, "the number of classes could not be read from the logits", evidence)
        expected, low_ok = math.log(classes), None
        evidence.update(classes=classes, expected=expected, expected_formula=f"ln({classes})")
        warn_r, fail_r = CLS_WARN_RATIO, CLS_FAIL_RATIO
    elif kind in ("bce", "bce_logits"):
        p = li.get("target_mean")
        expected = math.log(2)
        evidence.update(expected=expected, expected_formula="ln 2")
        low_ok = None
        if p is not None and 0 < p < 1:
            low_ok = -(p * math.log(p) + (1 - p) * math.log(1 - p))  # label entropy: a prior-initialised bias
            evidence["label_entropy"] = low_ok
        warn_r, fail_r = CLS_WARN_RATIO, CLS_FAIL_RATIO
    elif kind == "mse":
        var = li.get("target_var")
        if not var or var <= 0:
            return result(CHECK, SKIP, "the target variance is zero or unknown", evidence)
        expected, low_ok = var, None
        evidence.update(expected=expected, expected_formula="Var(target)", target_mean=li.get("target_mean"))
        warn_r, fail_r = MSE_WARN_RATIO, MSE_FAIL_RATIO
    else:
        return result(CHECK, SKIP, f"no expected initial value for a {kind} loss", evidence)

    ratio = first / expected
    evidence["ratio"] = ratio
    lo = LOW_RATIO * (low_ok / expected) if low_ok else LOW_RATIO  # a prior-initialised BCE may start at the label entropy
    head = f"first loss {fmt(first)} vs expected {fmt(expected)} ({evidence['expected_formula']}): {ratio:.2f}x"
    findings = []
    if ratio > fail_r or ratio > warn_r:
        status = FAIL if ratio > fail_r else WARN
        why = "overconfident or broken init"
        if kind == "mse" and li.get("target_mean") is not None and abs(li["target_mean"]) > 3 * math.sqrt(expected):
            why = f"targets are not centred (mean {fmt(li['target_mean'])}): normalise them or set the output bias"
        findings = finding_at(CHECK, li.get("path"), li.get("line"), f"{head}: {why}", evidence=dict(evidence))
        return result(CHECK, status, f"{head} — {why}", evidence,
                      "Initialise the last layer small (zero or std 0.01), the output bias to the label prior or "
                      "the target mean, and normalise regression targets.", findings)
    if ratio < lo:
        return result(CHECK, WARN, f"{head} — suspiciously low at step 0 (resumed weights, or the label leaks into the input?)",
                      evidence, "If this is not a resumed checkpoint, check that the inputs do not contain the target.")
    return result(CHECK, PASS, head, evidence)
