"""output-diversity: the model's outputs differ across the batch (no collapse)."""

from __future__ import annotations

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, fmt, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="output-diversity",
    code="DP108",
    summary="The model's outputs vary across the batch: rows not identical, not every sample the same class.",
)

#: Spread across rows below 0.1% of the output scale: the rows are the same up to float noise.
IDENTICAL_REL = 1e-3
#: 99% of rows predicting one class ("every sample").
ONE_CLASS = 0.99
#: Labels at most 95% one class: predicting a single class is then a collapse, not the right answer.
LABEL_VARIED = 0.95
#: Fewer rows cannot show diversity.
MIN_ROWS = 8


PAGE = Sections(
    why=f"""
        A model whose output does not depend on its input, or that predicts one class for every sample, has
        collapsed: the loss may still go down a little (it learns the prior) while nothing useful is
        learned. On sampled steps the check reads the top-level model's output (its first tensor, or
        `.logits`), up to 256 rows with columns strided to 4096 elements: the spread across rows (mean over
        columns of the standard deviation over rows) relative to the output's RMS, and for 2-D outputs with
        several columns the share of rows whose argmax is the most common class; the share of the most common
        label comes from the cross-entropy/NLL target. It judges the last half of the sampled steps (a fresh
        init may favour one class for a step or two). It fails "identical rows" when the relative spread is
        below {number(IDENTICAL_REL)} (inputs broadcast from one sample, a collapsed representation, a dead layer in
        front of the head, a bias-only output), and "one class" when at least {number(ONE_CLASS * 100)}% of the rows
        predict the same class while the most common label is at most {number(LABEL_VARIED * 100)}% (class imbalance,
        labels not aligned with inputs, features that carry no signal) — on every judged step, so a model
        still learning the prior on some steps (a language model predicting its most frequent token early)
        is not a collapse; it only warns when the labels are unknown. The summary reports the same numbers
        the verdict reads (the lowest and highest share of the top class over the judged steps).

        What to do: check that each sample's input reaches the model (shapes, broadcasting, inputs and
        labels shuffled together), rebalance classes or weight the loss, check the layers before the head.
    """,
    known_problems=f"""
        Batches of fewer than {MIN_ROWS} rows are skipped. Only the top-level model's output is read (the
        module called on the batch): a model assembled from functions, or outputs that are dicts without
        `.logits`, are not judged. Outputs whose rows are meant to be alike (a reconstruction of constant
        images) can fail "identical rows".
    """,
    bad="""
        x = x[:1].expand_as(x)       # every row of the batch is the first sample
        logits = model(x)
    """,
    good="""
        logits = model(x)
    """,
)


def evaluate(run: ProbeRun):
    sampled = [s for s in run.sampled_steps() if s.output.get("rows")]
    if not sampled:
        raise Skip("no model output seen on a sampled step (the model is not an nn.Module called on the batch?)")
    judged = sampled[len(sampled) // 2:]
    if max(s.output["rows"] for s in judged) < MIN_ROWS:
        raise Skip(f"batches of fewer than {MIN_ROWS} rows cannot show diversity")
    rel = [s.output["row_spread"] / s.output["scale"] if s.output.get("scale") else 0.0 for s in judged]
    top = [s.output.get("pred_top_frac") for s in judged]
    labels = [s.output.get("label_top_frac") for s in judged]
    evidence = {"relative_row_spread": rel, "pred_top_frac": top, "label_top_frac": labels,
                "steps": [s.step for s in judged], "output_shape": judged[-1].output.get("shape")}
    if all(r < IDENTICAL_REL for r in rel):
        return result(CHECK, FAIL, f"outputs are (nearly) identical across the batch (relative spread {fmt(max(rel))})",
                      evidence, "Check that each sample's input reaches the model (broadcasting, a collapsed "
                      "representation, a dead layer before the head).")
    known_top = [t for t in top if t is not None]
    known = [x for x in labels if x is not None]
    label_top = max(known) if known else None
    lo_top, hi_top = (min(known_top), max(known_top)) if known_top else (None, None)
    evidence.update(pred_top_frac_min=lo_top, pred_top_frac_max=hi_top, label_top_frac_max=label_top)
    # The verdict and the summary read the same numbers: one class on *every* judged step (the lowest share
    # is at least ONE_CLASS) is a collapse; a model still learning the prior on some steps is not.
    if lo_top is not None and lo_top >= ONE_CLASS:
        if label_top is not None and label_top <= LABEL_VARIED:
            return result(CHECK, FAIL, f"every sample predicted as one class (at least {lo_top:.0%} of rows on each of "
                          f"{len(known_top)} judged steps) while the most common label is at most {label_top:.0%} of a batch",
                          evidence, "Rebalance or weight classes, check that labels are aligned with inputs, and that the "
                          "features carry signal.")
        if label_top is None:
            return result(CHECK, WARN, f"every sample predicted as one class (at least {lo_top:.0%} of rows on each judged "
                          "step); labels unknown", evidence, "Check class balance and that labels are aligned with inputs.")
        return result(CHECK, PASS, f"every sample predicted as one class (at least {lo_top:.0%} of rows), as is up to "
                      f"{label_top:.0%} of the labels: right for these batches (see class-balance)", evidence)
    summary = f"relative row spread {fmt(min(rel))}"
    if hi_top is not None:
        if hi_top >= ONE_CLASS:
            summary += (f", top predicted class {lo_top:.0%}-{hi_top:.0%} of rows (one class on some judged steps, not on "
                        "all: still learning the prior)")
        else:
            summary += f", top predicted class at most {hi_top:.0%} of rows"
    return result(CHECK, PASS, summary, evidence)
